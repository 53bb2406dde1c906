//! `peerkeep drain`, `undrain` and `rm`: the operator's writes.

use anyhow::bail;

use super::out::emit;
use crate::cli_args::EtcdArgs;
use crate::connect::Etcd;
use crate::control;
use crate::names::NodeId;

/// `drain`: writes the control key; notes when the node has no record (yet).
pub(super) async fn drain(etcd: &Etcd, args: &EtcdArgs, id: &NodeId) -> anyhow::Result<()> {
    let keyspace = args.keyspace()?;
    control::drain(etcd, &keyspace, id).await?;
    emit(&format!(
        "drain requested for {id} in cluster {}\n",
        args.cluster
    ))?;
    let snap = crate::membership::read_once(etcd, &keyspace, args.policy()).await?;
    if !snap.records.contains_key(id) {
        eprintln!(
            "note: {id} has no valid record now; its agent will drain as soon as it registers"
        );
    }
    Ok(())
}

/// `undrain`: deletes the control key.
pub(super) async fn undrain(etcd: &Etcd, args: &EtcdArgs, id: &NodeId) -> anyhow::Result<()> {
    let keyspace = args.keyspace()?;
    if control::undrain(etcd, &keyspace, id).await? {
        emit(&format!("drain request for {id} withdrawn\n"))?;
    } else {
        emit(&format!("no drain request for {id}; nothing to do\n"))?;
    }
    Ok(())
}

/// `rm`: deletes the record and slot claim, warning when a live agent will put them back.
pub(super) async fn rm(etcd: &Etcd, args: &EtcdArgs, id: &NodeId) -> anyhow::Result<()> {
    let keyspace = args.keyspace()?;
    let removal = control::remove_node(etcd, &keyspace, id).await?;
    if !removal.deleted_anything() {
        bail!(
            "no record or slot claim for {id} in cluster {}",
            args.cluster
        );
    }
    let slots: Vec<String> = removal
        .slots_deleted
        .iter()
        .map(ToString::to_string)
        .collect();
    let record = if removal.record_deleted {
        "deleted"
    } else {
        "absent"
    };
    emit(&format!(
        "removed {id}: record {record}, slots [{}]\n",
        slots.join(",")
    ))?;
    if let Some((lease, ttl_secs)) = removal.live_lease {
        eprintln!(
            "warning: {id}'s lease {lease:x} is alive ({ttl_secs}s left): its agent is running and \
             will put its keys back. To take a live node out of service, use `peerkeep drain {id}`."
        );
    }
    Ok(())
}
