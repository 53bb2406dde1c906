//! `AddrSource`: one way of finding an address, as written on the command line.
//!
//! The syntax is `kind[:argument]` (`ip:203.0.113.7`, `env:PUBLIC_IP`, `iface:eth0`,
//! `cidr:10.0.0.0/8`, `ec2:public-ipv4`, `ec2:local-ipv4`, `route`, `hostname`). Only the first
//! colon separates kind from argument, so IPv6 literals need no brackets. Parsing checks the
//! argument's syntax up front, so a typo fails at start with exit code 2 rather than being
//! skipped silently at resolution time.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Which EC2 instance metadata field to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2Field {
    /// `meta-data/public-ipv4`: the instance's public (or Elastic) IPv4; absent on private
    /// instances, where the metadata service answers 404.
    PublicIpv4,
    /// `meta-data/local-ipv4`: the primary private IPv4.
    LocalIpv4,
}

impl Ec2Field {
    /// The metadata path under `/latest/meta-data/`.
    pub fn path(self) -> &'static str {
        match self {
            Self::PublicIpv4 => "public-ipv4",
            Self::LocalIpv4 => "local-ipv4",
        }
    }
}

/// One address source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSource {
    /// A literal address.
    Ip(IpAddr),
    /// An environment variable holding an address.
    Env(String),
    /// The first usable address of a network interface (IPv4 preferred).
    Iface(String),
    /// The first usable local interface address inside a network.
    Cidr(IpNet),
    /// A field of the EC2 instance metadata service.
    Ec2(Ec2Field),
    /// The source address the kernel picks for the default route.
    Route,
    /// What the host name resolves to.
    Hostname,
}

/// A source that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{shown:?}: {why} (sources: ip:<addr>, env:<VAR>, iface:<name>, cidr:<net>, ec2:public-ipv4, ec2:local-ipv4, route, hostname)"
)]
pub struct SourceSyntaxError {
    /// The offending input, truncated.
    pub shown: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for AddrSource {
    type Err = SourceSyntaxError;

    fn from_str(s: &str) -> Result<Self, SourceSyntaxError> {
        let fail = |why: &str| SourceSyntaxError {
            shown: s.chars().take(80).collect(),
            why: why.to_owned(),
        };
        let s_trim = s.trim();
        let (kind, arg) = match s_trim.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s_trim, None),
        };
        match (kind, arg) {
            ("ip", Some(a)) => a
                .parse()
                .map(Self::Ip)
                .map_err(|_| fail("not an IP address")),
            ("env", Some(a)) if is_env_name(a) => Ok(Self::Env(a.to_owned())),
            ("env", _) => Err(fail("expected an environment variable name")),
            ("iface", Some(a)) if !a.is_empty() && a.len() < 16 && !a.contains('/') => {
                Ok(Self::Iface(a.to_owned()))
            }
            ("iface", _) => Err(fail("expected an interface name (at most 15 bytes)")),
            ("cidr", Some(a)) => a
                .parse()
                .map(Self::Cidr)
                .map_err(|_| fail("not a network in CIDR notation (e.g. 10.0.0.0/8)")),
            ("ec2", Some("public-ipv4")) => Ok(Self::Ec2(Ec2Field::PublicIpv4)),
            ("ec2", Some("local-ipv4")) => Ok(Self::Ec2(Ec2Field::LocalIpv4)),
            ("ec2", _) => Err(fail("ec2 fields are public-ipv4 and local-ipv4")),
            ("route", None) => Ok(Self::Route),
            ("hostname", None) => Ok(Self::Hostname),
            ("route" | "hostname", Some(_)) => Err(fail("takes no argument")),
            ("ip", None) => Err(fail("expected ip:<address>")),
            ("cidr", None) => Err(fail("expected cidr:<network>")),
            _ => Err(fail("unknown address source")),
        }
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for AddrSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::Env(v) => write!(f, "env:{v}"),
            Self::Iface(i) => write!(f, "iface:{i}"),
            Self::Cidr(n) => write!(f, "cidr:{n}"),
            Self::Ec2(field) => write!(f, "ec2:{}", field.path()),
            Self::Route => f.write_str("route"),
            Self::Hostname => f.write_str("hostname"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_round_trips() {
        for s in [
            "ip:203.0.113.7",
            "ip:2001:db8::1",
            "env:PUBLIC_IP",
            "iface:eth0",
            "cidr:10.0.0.0/8",
            "cidr:2001:db8::/32",
            "ec2:public-ipv4",
            "ec2:local-ipv4",
            "route",
            "hostname",
        ] {
            let src: AddrSource = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(src.to_string(), s);
        }
    }

    #[test]
    fn rejects_typos_at_parse_time() {
        for bad in [
            "",
            "ip:",
            "ip:host.example",
            "ip",
            "env:",
            "env:1X",
            "env:A-B",
            "iface:",
            "iface:a/b",
            "cidr:10.0.0.0",
            "ec2:public-ipv6",
            "ec2",
            "route:x",
            "hostname:x",
            "dns:example.com",
        ] {
            assert!(bad.parse::<AddrSource>().is_err(), "{bad:?} accepted");
        }
    }
}
