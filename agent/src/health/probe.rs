//! `peerkeep-agent health`: one request to the local health server, for Docker `HEALTHCHECK`.
//!
//! Deliberately tiny and synchronous (no async runtime, no HTTP client): it runs every few
//! seconds in every container, so it must start fast and cost nothing. HTTP/1.0 with
//! `Connection: close`, a single deadline under one second for the whole exchange, and only the
//! status line and first body line are read.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::cli::Probe;

/// Deadline for the whole exchange.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The outcome: healthy or not, and the one line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe passed (HTTP 200).
    pub healthy: bool,
    /// One line for the log of the health check.
    pub line: String,
}

/// Asks `addr` (`host:port`) for `probe`.
pub fn check(addr: &str, probe: Probe) -> ProbeResult {
    let path = match probe {
        Probe::Live => "/livez",
        Probe::Ready => "/readyz",
    };
    match exchange(addr, path) {
        Ok((code, body)) => ProbeResult {
            healthy: code == 200,
            line: format!("{path} {code}: {body}"),
        },
        Err(e) => ProbeResult {
            healthy: false,
            line: format!("{path}: cannot ask the agent at {addr}: {e}"),
        },
    }
}

fn exchange(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing")
    })?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 4096 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_response(&String::from_utf8_lossy(&buf))
}

fn parse_response(text: &str) -> std::io::Result<(u16, String)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status_line = text.lines().next().ok_or_else(bad)?;
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_first_body_line() {
        let r = parse_response("HTTP/1.1 503 Service Unavailable\r\nx: y\r\n\r\ndraining\nmore")
            .expect("valid");
        assert_eq!(r, (503, "draining".to_owned()));
        assert!(parse_response("garbage").is_err());
    }

    #[test]
    fn nothing_listening_is_unhealthy_and_fast() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let started = Instant::now();
        let r = check(&format!("127.0.0.1:{port}"), Probe::Live);
        assert!(!r.healthy);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!r.line.contains('\n'), "{}", r.line);
    }
}
