//! Pre-checking a joining server before it is enabled.
//!
//! HAProxy schedules the first check of a server leaving maintenance one full `inter` later, so
//! a joiner marked `health down` would wait up to a check interval, plus `rise` checks, before
//! its first request. Instead the applier probes the joiner once itself, exactly as HAProxy's
//! check would (HTTP/1.0 `GET <path>` expecting 2xx/3xx, or a TCP connect, to the same
//! address), and enables it directly when the probe passes; only a joiner that fails the probe
//! is enabled `health down` and left to HAProxy's checks. From then on HAProxy's own checks
//! decide, so a node that dies right after the probe is taken out after `fall` checks as usual.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use peerkeep_registry::{Endpoint, Slot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{CheckKind, ServiceName};
use crate::model::Model;
use crate::runtime_cmd::RuntimeCommand;

/// Whether `target` passes the check `kind` within `timeout`.
pub async fn passes(kind: &CheckKind, target: Endpoint, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, attempt(kind, target))
        .await
        .unwrap_or(false)
}

async fn attempt(kind: &CheckKind, target: Endpoint) -> bool {
    let Ok(mut stream) = TcpStream::connect(target.addr()).await else {
        return false;
    };
    let path = match kind {
        CheckKind::Tcp => return true,
        CheckKind::HealthEndpoint(p) | CheckKind::Http(p) => p,
    };
    // The path is a validated `CheckPath`; the host is the typed endpoint.
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n",
        path.as_str()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // Only the status line matters: "HTTP/1.x NNN".
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    status_ok(&head[..filled])
}

fn status_ok(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split(' ');
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
    let code = parts
        .next()
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    version_ok && code.is_some_and(|c| (200..400).contains(&c))
}

/// Longest a joiner's pre-check may take; it delays the whole batch.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes every joiner once (as HAProxy's check would) and drops the `health down` of those that
/// pass, so they take traffic at once instead of after HAProxy's first scheduled checks.
pub async fn enable_healthy_joiners(
    desired: &Model,
    cmds: Vec<RuntimeCommand>,
) -> Vec<RuntimeCommand> {
    let mut targets = BTreeMap::new();
    for c in &cmds {
        let RuntimeCommand::MarkDown { backend, slot } = c else {
            continue;
        };
        let Some(b) = desired
            .backends
            .iter()
            .find(|b| &b.service.name == backend.service())
        else {
            continue;
        };
        if let Some(server) = b.servers.get(slot) {
            let target = server.check_addr.unwrap_or(server.addr);
            let timeout = b.service.timeouts.check.min(PROBE_TIMEOUT);
            targets.insert(
                (b.service.name.clone(), *slot),
                (b.service.check.kind.clone(), target, timeout),
            );
        }
    }
    if targets.is_empty() {
        return cmds;
    }
    let probes = targets
        .into_iter()
        .map(|(key, (kind, target, timeout))| async move {
            (key, passes(&kind, target, timeout).await)
        });
    let healthy: BTreeSet<(ServiceName, Slot)> = futures::stream::iter(probes)
        .buffer_unordered(PROBE_CONCURRENCY)
        .filter_map(|(key, ok)| async move { ok.then_some(key) })
        .collect()
        .await;
    cmds.into_iter()
        .filter(|c| match c {
            RuntimeCommand::MarkDown { backend, slot } => {
                !healthy.contains(&(backend.service().clone(), *slot))
            }
            _ => true,
        })
        .collect()
}

/// Joiners probed at the same time.
const PROBE_CONCURRENCY: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckPath;

    #[test]
    fn status_lines() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 302 Found"));
        assert!(!status_ok(b"HTTP/1.1 503 Service"));
        assert!(!status_ok(b"SSH-2.0-OpenSSH"));
        assert!(!status_ok(b""));
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: Endpoint = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("endpoint");
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut c, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                let reply: &[u8] = if n == 0 {
                    b"HTTP/1.0 200 OK\r\n\r\nok"
                } else {
                    b"HTTP/1.0 503 Nope\r\n\r\n"
                };
                let _ = c.write_all(reply).await;
                n += 1;
            }
        });
        let http = CheckKind::Http(CheckPath::new("/readyz").expect("path"));
        let t = Duration::from_secs(2);
        assert!(passes(&http, addr, t).await);
        assert!(!passes(&http, addr, t).await, "503 fails");
        assert!(passes(&CheckKind::Tcp, addr, t).await);
        let closed: Endpoint = "127.0.0.1:1".parse().expect("endpoint");
        assert!(!passes(&CheckKind::Tcp, closed, t).await);
    }
}
