//! Address resolution through `peerkeep-agent resolve-addr`, against a fake EC2 metadata
//! service on loopback: IMDSv2, fallbacks to IMDSv1, 404 and an unreachable service moving on
//! to the next source.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use peerkeep_tests::imds::{FakeImds, ImdsBehaviour, TokenMode};
use peerkeep_tests::proc::{free_port, workspace_bin};

fn resolve(endpoint: &str, advertise: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(workspace_bin("peerkeep-agent"))
        .args(["resolve-addr", "--advertise", advertise])
        .args(["--private-addr", "ip:10.0.0.5"])
        .args(["--imds-endpoint", endpoint])
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peerkeep-agent resolve-addr");
    (out, started.elapsed())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn imds(token: TokenMode, public: Option<&str>) -> FakeImds {
    FakeImds::start(ImdsBehaviour {
        token,
        public_ipv4: public.map(str::to_owned),
        local_ipv4: Some("10.0.1.5".to_owned()),
    })
}

#[test]
fn imds_v2_token_then_get() {
    let fake = imds(TokenMode::Issue, Some("203.0.113.7"));
    let (out, _) = resolve(&fake.endpoint(), "ec2:public-ipv4");
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("advertise 203.0.113.7 from ec2:public-ipv4"),
        "{}",
        stdout(&out)
    );
    let (tokens, v2, v1) = fake.calls();
    assert_eq!((tokens, v1), (1, 0));
    assert!(v2 >= 1);
}

#[test]
fn imds_token_refused_with_403_falls_back_to_v1() {
    let fake = imds(TokenMode::Forbidden, Some("203.0.113.8"));
    let (out, _) = resolve(&fake.endpoint(), "ec2:public-ipv4");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("advertise 203.0.113.8 from ec2:public-ipv4"));
    let (_, v2, v1) = fake.calls();
    assert_eq!(v2, 0);
    assert!(v1 >= 1);
}

#[test]
fn imds_token_call_hanging_falls_back_to_v1_after_the_timeout() {
    let fake = imds(TokenMode::Hang, Some("203.0.113.9"));
    let (out, took) = resolve(&fake.endpoint(), "ec2:public-ipv4");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("advertise 203.0.113.9 from ec2:public-ipv4"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let (tokens, _, v1) = fake.calls();
    assert_eq!(tokens, 1);
    assert!(v1 >= 1);
}

#[test]
fn imds_404_moves_on_to_the_next_source() {
    let fake = imds(TokenMode::Issue, None);
    let (out, _) = resolve(&fake.endpoint(), "ec2:public-ipv4,ip:198.51.100.7");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("advertise 198.51.100.7 from ip:198.51.100.7"),
        "{text}"
    );
    assert!(
        text.contains("skipped ec2:public-ipv4") && text.contains("404"),
        "{text}"
    );
}

#[test]
fn imds_local_ipv4_is_read_too() {
    let fake = imds(TokenMode::Issue, None);
    let (out, _) = resolve(&fake.endpoint(), "ec2:public-ipv4,ec2:local-ipv4");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("advertise 10.0.1.5 from ec2:local-ipv4"));
    assert_eq!(
        fake.calls().0,
        1,
        "the token is fetched once for both sources"
    );
}

#[test]
fn imds_with_nothing_listening_moves_on_within_about_a_second() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let (out, took) = resolve(&endpoint, "ec2:public-ipv4,ip:198.51.100.8");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("advertise 198.51.100.8 from ip:198.51.100.8"),
        "{text}"
    );
    assert!(text.contains("unreachable"), "{text}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn aws_endpoint_variable_is_honoured() {
    let fake = imds(TokenMode::Issue, Some("203.0.113.10"));
    let out = Command::new(workspace_bin("peerkeep-agent"))
        .args(["resolve-addr", "--advertise", "ec2:public-ipv4"])
        .args(["--private-addr", "ip:10.0.0.5"])
        .env_remove("PEERKEEP_IMDS_ENDPOINT")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.endpoint())
        .output()
        .expect("run resolve-addr");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("203.0.113.10"));
}

#[test]
fn no_usable_source_fails_with_every_reason() {
    let out = Command::new(workspace_bin("peerkeep-agent"))
        .args([
            "resolve-addr",
            "--advertise",
            "ip:127.0.0.1,env:PEERKEEP_TEST_UNSET",
        ])
        .args(["--private-addr", "ip:10.0.0.5"])
        .output()
        .expect("run resolve-addr");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback") && err.contains("PEERKEEP_TEST_UNSET"),
        "{err}"
    );
}
