//! Endpoints (`ip:port`) and the address policy.
//!
//! An endpoint is always an IP literal with a port in 1–65535: never a host name (it would have
//! to be resolved by every consumer, differently) and never port 0 (HAProxy reads it as "the
//! client's port"). Which *kinds* of address are acceptable is a separate, configurable question,
//! answered by [`AddressPolicy`] in the membership view, so that tests and single-host demos can
//! allow loopback while production refuses it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A validated `ip:port` (or `[v6]:port`) endpoint with a non-zero port.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint(SocketAddr);

/// Why a string is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not of the form `ip:port` / `[v6]:port` with an IP literal.
    #[error("{shown:?} is not an IP address with a port (ip:port or [v6]:port)")]
    Syntax {
        /// The offending input, truncated for display.
        shown: String,
    },
    /// Port 0.
    #[error("{0}: port 0 is not a usable port (1-65535)")]
    PortZero(String),
}

impl Endpoint {
    /// Makes an endpoint from a socket address, refusing port 0.
    pub fn new(addr: SocketAddr) -> Result<Self, EndpointError> {
        if addr.port() == 0 {
            return Err(EndpointError::PortZero(addr.to_string()));
        }
        // Scope ids and flow info are host-local and never meaningful to another node.
        let addr = match addr {
            SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
            v4 => v4,
        };
        Ok(Self(addr))
    }
    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }
    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.0.port()
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let addr: SocketAddr = s.parse().map_err(|_| EndpointError::Syntax {
            shown: s.chars().take(80).collect(),
        })?;
        // `SocketAddr` accepts `[fe80::1%2]:1`; reject scope ids in text form as well.
        if s.contains('%') {
            return Err(EndpointError::Syntax {
                shown: s.chars().take(80).collect(),
            });
        }
        Self::new(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(e: Endpoint) -> SocketAddr {
        e.0
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which kinds of IP address may be advertised and dialed.
///
/// Unspecified (`0.0.0.0`, `::`) and multicast addresses are never acceptable: nobody can dial
/// them. Loopback is refused by default, because a loopback address in a shared registry means a
/// node advertised the wrong interface; `--allow-loopback` admits it for tests and demos.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Admit loopback addresses (127.0.0.0/8, ::1).
    pub allow_loopback: bool,
}

/// An address refused by the [`AddressPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressRejected {
    /// `0.0.0.0` or `::`.
    #[error("{0} is an unspecified address; advertise a concrete interface address")]
    Unspecified(IpAddr),
    /// A multicast group.
    #[error("{0} is a multicast address")]
    Multicast(IpAddr),
    /// Loopback without `--allow-loopback`.
    #[error("{0} is a loopback address (pass --allow-loopback for single-host setups)")]
    Loopback(IpAddr),
}

impl AddressPolicy {
    /// Checks one IP address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), AddressRejected> {
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            Err(AddressRejected::Unspecified(ip))
        } else if ip.is_multicast() {
            Err(AddressRejected::Multicast(ip))
        } else if ip.is_loopback() && !self.allow_loopback {
            Err(AddressRejected::Loopback(ip))
        } else {
            Ok(())
        }
    }
    /// Checks one endpoint's address.
    pub fn check(&self, e: &Endpoint) -> Result<(), AddressRejected> {
        self.check_ip(e.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_syntax() {
        assert!("10.0.0.1:1".parse::<Endpoint>().is_ok());
        assert!("[2001:db8::1]:65535".parse::<Endpoint>().is_ok());
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "host:80",
            "10.0.0.1:80\n",
            " 10.0.0.1:80",
            "[fe80::1%2]:80",
            "2001:db8::1:80",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn policy_both_ways() {
        let strict = AddressPolicy::default();
        let lax = AddressPolicy {
            allow_loopback: true,
        };
        let lo: Endpoint = "127.0.0.1:80".parse().expect("valid");
        let lo6: Endpoint = "[::1]:80".parse().expect("valid");
        let mapped: Endpoint = "[::ffff:127.0.0.1]:80".parse().expect("valid");
        assert!(strict.check(&lo).is_err());
        assert!(strict.check(&lo6).is_err());
        assert!(strict.check(&mapped).is_err());
        assert!(lax.check(&lo).is_ok());
        for never in ["0.0.0.0:1", "[::]:1", "224.0.0.1:1"] {
            let e: Endpoint = never.parse().expect("valid syntax");
            assert!(lax.check(&e).is_err(), "{never} accepted");
        }
        let public: Endpoint = "203.0.113.7:3000".parse().expect("valid");
        assert!(strict.check(&public).is_ok());
    }
}
