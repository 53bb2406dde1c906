//! Regression: a prefix whose values add up to more than one gRPC message (4 MiB) must still be
//! readable. Before paged reads, a few hundred oversized (invalid) values written by anyone with
//! access to the prefix made every full read fail, freezing the agents' and the load balancer's
//! views.

use peerkeep_registry::{AddressPolicy, EtcdOptions, Keyspace, connect, read_once};
use peerkeep_tests::Etcd;

#[tokio::test]
async fn oversized_values_beyond_one_grpc_message_do_not_make_the_view_unreadable() {
    let etcd = Etcd::start();
    let nodes = "/peerkeep/v1/clusters/default/nodes/";
    let mut kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                format!("{nodes}big{i:03}").into_bytes(),
                vec![b'x'; 100 * 1024],
            )
        })
        .collect();
    for id in ["good-a", "good-b"] {
        let record = serde_json::json!({
            "id": id, "state": "ready", "slot": if id == "good-a" { 1 } else { 2 },
            "instance": "i", "endpoints": {"p2p": "10.0.0.1:3000"}
        });
        kvs.push((
            format!("{nodes}{id}").into_bytes(),
            record.to_string().into_bytes(),
        ));
    }
    etcd.put_raw(&kvs).await;

    let etcd_client = connect(&EtcdOptions::new(vec![etcd.endpoint()]))
        .await
        .expect("options");
    let ks = Keyspace::new("/peerkeep/v1", "default".parse().expect("valid")).expect("valid");
    let snap = read_once(&etcd_client, &ks, AddressPolicy::default())
        .await
        .expect("a 6 MB prefix is read in pages");
    let ids: Vec<&str> = snap.records.keys().map(|k| k.as_str()).collect();
    assert_eq!(ids, ["good-a", "good-b"]);
    assert_eq!(
        snap.skipped.len(),
        60,
        "every oversized value is skipped and listed"
    );
}
