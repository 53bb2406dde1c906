//! Registration through etcd with mutual TLS, and with auth enabled and a prefix-limited role.
//!
//! Certificates are made by the test with rcgen: a CA, a server certificate for 127.0.0.1 and a
//! client certificate. etcd is started with `--client-cert-auth`, so a client without a
//! certificate is refused. The auth test enables etcd's auth with a root user and a user whose
//! role can only read and write one cluster's prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use peerkeep_registry::{
    AddressPolicy, Credentials, DEFAULT_PREFIX, Etcd as Client, EtcdOptions, Keyspace, Membership,
    NodeId, NodeInfo, NodeState, Registration, RegistrationConfig, RegistrationState,
    RegistryError, TlsFiles, connect,
};
use peerkeep_tests::etcd::write_file;
use peerkeep_tests::{Etcd, eventually};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(20);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn keyspace(cluster: &str) -> Keyspace {
    Keyspace::new(DEFAULT_PREFIX, cluster.parse().expect("valid cluster")).expect("valid keyspace")
}

fn info() -> NodeInfo {
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        "p2p".parse().expect("valid name"),
        "127.0.0.1:3000".parse().expect("valid endpoint"),
    );
    NodeInfo::new(endpoints)
}

fn options(endpoint: String) -> EtcdOptions {
    EtcdOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::new([endpoint])
    }
}

fn spawn(rt: &Runtime, etcd: &Client, cluster: &str, node: &str) -> Registration {
    let _ctx = rt.enter();
    let id: NodeId = node.parse().expect("valid id");
    let cfg = RegistrationConfig::new(keyspace(cluster), id).with_ttl(TTL);
    Registration::spawn(etcd.clone(), cfg, info()).expect("valid registration")
}

fn registered(rt: &Runtime, reg: &Registration) {
    rt.block_on(async { tokio::time::timeout(LONG, reg.registered()).await })
        .expect("registered in time")
        .expect("registered");
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Certificates for one test, written as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "peerkeep test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(
        "etcd",
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key) = leaf(
        "peerkeep-agent",
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: write_file(dir, "ca.pem", &ca_cert.pem()),
        server_cert: write_file(dir, "server.pem", &server_pem),
        server_key: write_file(dir, "server-key.pem", &server_key),
        client_cert: write_file(dir, "client.pem", &client_pem),
        client_key: write_file(dir, "client-key.pem", &client_key),
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_owned()
}

#[test]
fn mutual_tls_registration_works_and_a_missing_client_cert_is_refused_clearly() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(pki_dir.path());
    let etcd = Etcd::start_with(
        vec![
            format!("--cert-file={}", path(&pki.server_cert)),
            format!("--key-file={}", path(&pki.server_key)),
            format!("--trusted-ca-file={}", path(&pki.ca)),
            "--client-cert-auth".to_owned(),
        ],
        "https",
    );
    let rt = runtime();

    let tls = TlsFiles {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    let good = rt
        .block_on(connect(&EtcdOptions {
            tls: Some(tls),
            ..options(etcd.endpoint())
        }))
        .expect("connect");
    rt.block_on(good.probe())
        .expect("etcd answers over mutual TLS");
    let reg = spawn(&rt, &good, "t", "n1");
    registered(&rt, &reg);

    // Read back independently, with etcdctl over the same TLS.
    let key = keyspace("t").node_key(&"n1".parse().expect("valid id"));
    let out = check(
        etcd_tls_ctl(&etcd, &pki, &["get", &key, "--print-value-only"]),
        "etcdctl get",
    );
    assert!(out.contains(reg.instance()), "record readable: {out}");

    // Only the CA, no client certificate: refused on the first request, with a clear error.
    let no_cert = rt
        .block_on(connect(&EtcdOptions {
            tls: Some(TlsFiles {
                ca: Some(pki.ca.clone()),
                ..TlsFiles::default()
            }),
            ..options(etcd.endpoint())
        }))
        .expect("connect is lazy");
    let err = rt
        .block_on(no_cert.probe())
        .expect_err("refused without a client certificate");
    let text = err.to_string();
    eprintln!("without a client certificate: {text}");
    assert!(err.is_unreachable(), "{err:?}");
    assert!(
        text.contains(&etcd.endpoint()),
        "names the endpoint: {text}"
    );
    assert!(text.contains("certificate"), "says what is missing: {text}");

    rt.block_on(reg.revoke()).expect("revoke over TLS");
}

fn etcd_tls_ctl(etcd: &Etcd, pki: &Pki, args: &[&str]) -> Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .arg(format!("--cacert={}", path(&pki.ca)))
        .arg(format!("--cert={}", path(&pki.client_cert)))
        .arg(format!("--key={}", path(&pki.client_key)))
        .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
        .args(args)
        .output()
        .expect("etcdctl must be installed")
}

/// Enables auth: `root` (password `rootpw`) and `app` (password `apppw`) whose role may only
/// read and write cluster `t`.
fn enable_auth(etcd: &Etcd) {
    let prefix = keyspace("t").cluster_prefix();
    let steps: &[&[&str]] = &[
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "peerkeep-t"],
        &[
            "role",
            "grant-permission",
            "peerkeep-t",
            "--prefix=true",
            "readwrite",
            &prefix,
        ],
        &["user", "add", "app:apppw"],
        &["user", "grant-role", "app", "peerkeep-t"],
        &["auth", "enable"],
    ];
    for step in steps {
        check(etcd.etcdctl(step), &step.join(" "));
    }
}

fn with_user(endpoint: String, user: &str, password: &str) -> EtcdOptions {
    EtcdOptions {
        auth: Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }),
        ..options(endpoint)
    }
}

#[test]
fn prefix_limited_user_registers_and_watches_and_a_wrong_password_is_refused_clearly() {
    let mut etcd = Etcd::start();
    enable_auth(&etcd);
    etcd.set_etcdctl_user("root", "rootpw");
    let rt = runtime();

    let app = rt
        .block_on(connect(&with_user(etcd.endpoint(), "app", "apppw")))
        .expect("connect");
    rt.block_on(app.probe()).expect("credentials accepted");
    let view = {
        let _ctx = rt.enter();
        Membership::start(
            app.clone(),
            keyspace("t"),
            AddressPolicy {
                allow_loopback: true,
            },
        )
    };
    let reg = spawn(&rt, &app, "t", "n1");
    registered(&rt, &reg);
    eventually(LONG, "the watch under the prefix sees the record", || {
        view.snapshot()
            .records
            .keys()
            .any(|id| id.as_str() == "n1")
            .then_some(())
    });

    // etcd forgets its auth tokens when it restarts; the client authenticates again by itself.
    etcd.stop();
    etcd.start_again();
    let generation = reg.set_state(NodeState::Ready);
    rt.block_on(async { tokio::time::timeout(LONG, reg.written(generation)).await })
        .expect("written in time after the restart")
        .expect("written after the restart");
    eventually(LONG, "the watch resumes after the restart", || {
        view.snapshot()
            .records
            .values()
            .any(|r| r.id.as_str() == "n1" && r.state == NodeState::Ready)
            .then_some(())
    });

    // Outside its prefix the user is denied, and the status says so.
    let outside = spawn(&rt, &app, "other", "n2");
    let error = eventually(LONG, "permission error reported", || {
        outside.status().last_error
    });
    eprintln!("outside the prefix: {error}");
    assert!(error.contains("denied"), "{error}");
    assert_eq!(outside.status().state, RegistrationState::Unregistered);

    // A wrong password: refused, naming the user, not mistaken for an outage.
    let wrong = rt
        .block_on(connect(&with_user(etcd.endpoint(), "app", "nope")))
        .expect("connect is lazy");
    let err = rt.block_on(wrong.probe()).expect_err("wrong password");
    eprintln!("wrong password: {err}");
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("\"app\""), "{err}");
    assert!(!err.is_unreachable());

    rt.block_on(reg.revoke()).expect("revoke under auth");
}
