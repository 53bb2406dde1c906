//! Sources answered by this host alone: interfaces, networks, the default route, the host name.
//!
//! Each returns its candidates in order of preference (IPv4 before IPv6, IPv6 link-local never:
//! it is useless without a scope id, which the registry refuses); the caller applies the
//! address policy and takes the first that passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use ipnet::IpNet;

/// Why a local source has no address.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Listing interface addresses failed.
    #[error("cannot list interface addresses: {0}")]
    Getifaddrs(#[source] nix::Error),
    /// No interface of that name has an address.
    #[error("no interface {0:?} with an IP address (see `ip -br addr`)")]
    NoSuchInterface(String),
    /// No local address inside the network.
    #[error("no local interface address inside {0}")]
    NothingInNetwork(IpNet),
    /// No default route for either family.
    #[error("no default route (IPv4: {v4}; IPv6: {v6})")]
    NoRoute {
        /// Why the IPv4 probe failed.
        v4: std::io::Error,
        /// Why the IPv6 probe failed.
        v6: std::io::Error,
    },
    /// The host name could not be read or resolved.
    #[error("host name {name:?} does not resolve: {source}")]
    Hostname {
        /// The host name.
        name: String,
        /// The resolver error.
        #[source]
        source: std::io::Error,
    },
}

/// All interface addresses as (interface name, address), in kernel order.
fn interface_addrs() -> Result<Vec<(String, IpAddr)>, LocalError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(LocalError::Getifaddrs)?;
    Ok(addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect())
}

/// Orders candidates: IPv4 first, link-local IPv6 dropped, otherwise stable.
fn preferred(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.retain(|ip| !is_v6_link_local(ip));
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

fn is_v6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The addresses of interface `name`.
pub fn iface(name: &str) -> Result<Vec<IpAddr>, LocalError> {
    let ips: Vec<IpAddr> = interface_addrs()?
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ip)| ip)
        .collect();
    let ips = preferred(ips);
    if ips.is_empty() {
        return Err(LocalError::NoSuchInterface(name.to_owned()));
    }
    Ok(ips)
}

/// The local addresses inside `net`.
pub fn cidr(net: IpNet) -> Result<Vec<IpAddr>, LocalError> {
    let ips: Vec<IpAddr> = interface_addrs()?
        .into_iter()
        .map(|(_, ip)| ip)
        .filter(|ip| net.contains(ip))
        .collect();
    let ips = preferred(ips);
    if ips.is_empty() {
        return Err(LocalError::NothingInNetwork(net));
    }
    Ok(ips)
}

/// The source address of the default route. Connecting a UDP socket only asks the kernel for
/// a route; no packet is sent. The targets are documentation addresses (RFC 5737, RFC 3849),
/// which never belong to a real peer.
pub fn route() -> Result<Vec<IpAddr>, LocalError> {
    let probe = |bind: IpAddr, target: IpAddr| -> std::io::Result<IpAddr> {
        let sock = UdpSocket::bind(SocketAddr::new(bind, 0))?;
        sock.connect(SocketAddr::new(target, 9))?;
        Ok(sock.local_addr()?.ip())
    };
    let v4 = probe(
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::new(192, 0, 2, 1).into(),
    );
    let v6 = probe(
        Ipv6Addr::UNSPECIFIED.into(),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
    );
    match (v4, v6) {
        (Err(v4), Err(v6)) => Err(LocalError::NoRoute { v4, v6 }),
        (v4, v6) => Ok(preferred(v4.into_iter().chain(v6).collect())),
    }
}

/// What the host name resolves to (through the system resolver, `/etc/hosts` included).
/// Blocking: call from a blocking thread.
pub fn hostname() -> Result<Vec<IpAddr>, LocalError> {
    let name = nix::unistd::gethostname()
        .map_err(|e| LocalError::Hostname {
            name: String::new(),
            source: e.into(),
        })?
        .to_string_lossy()
        .into_owned();
    let resolved =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0)).map_err(|source| {
            LocalError::Hostname {
                name: name.clone(),
                source,
            }
        })?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in resolved {
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    Ok(preferred(ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interface_has_an_address() {
        let ips = iface("lo").expect("every Linux host has lo");
        assert_eq!(ips.first(), Some(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(matches!(
            iface("no-such-if0"),
            Err(LocalError::NoSuchInterface(_))
        ));
    }

    #[test]
    fn cidr_finds_loopback_and_not_documentation_nets() {
        let lo = cidr("127.0.0.0/8".parse().expect("valid")).expect("lo is up");
        assert!(lo.iter().all(|ip| ip.is_loopback()));
        assert!(cidr("198.51.100.0/24".parse().expect("valid")).is_err());
    }

    #[test]
    fn preference_puts_v4_first_and_drops_link_local() {
        let ips = preferred(vec![
            "fe80::1".parse().expect("valid"),
            "2001:db8::5".parse().expect("valid"),
            "10.0.0.1".parse().expect("valid"),
        ]);
        assert_eq!(
            ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("valid"),
                "2001:db8::5".parse().expect("valid")
            ]
        );
    }
}
