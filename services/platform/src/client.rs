//! Who the client of a request is, and the limits per client address the HTTP layer
//! applies: open connections per socket peer, new requests per client.
//!
//! The client is the socket peer, unless the peer is one of `SPOOL_TRUSTED_PROXIES`: then it
//! is the right-most address of `X-Forwarded-For` that is not itself a trusted proxy (each
//! proxy appends the address it got the request from, so everything left of what our own
//! proxies wrote is whatever the client claimed and is not believed).
//!
//! Limits count IPv4 clients by their address and IPv6 clients by their /64 (one host
//! usually holds a whole /64, and a limit per IPv6 address would be none).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::rate::{KeyedBuckets, Rate};

/// Most client addresses whose request buckets are kept at once (past it the least
/// recently seen are forgotten: they start again with a full burst).
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// `SPOOL_TRUSTED_PROXIES`: networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `ip` (an IPv4-mapped IPv6 address as its IPv4 address) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Comma-separated CIDRs (`10.0.0.0/8`) or single addresses; blank = none.
impl std::str::FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(format!(
                            "{item:?} is neither a CIDR (e.g. 10.0.0.0/8) nor an IP address"
                        ))
                    }
                },
            };
            networks.push(net);
        }
        Ok(TrustedProxies(networks))
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) as some proxies write it.
fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client address of a request that came from socket peer `peer`: `peer` itself
/// unless it is a trusted proxy; then, walking `X-Forwarded-For` (all its header lines, in
/// order) from the right, the first address that is not a trusted proxy — or the
/// left-most one if all are. A header that can't be read where it matters (not text, an
/// entry that is no address before an untrusted one is found) names no one: the peer is
/// the client then.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut lines = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(text) => lines.push(text),
            Err(_) => return peer,
        }
    }
    let mut leftmost_trusted = None;
    for entry in lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let Some(ip) = forwarded_entry(entry) else {
            return peer;
        };
        if !trusted.contains(ip) {
            return ip;
        }
        leftmost_trusted = Some(ip);
    }
    leftmost_trusted.unwrap_or(peer)
}

/// What limits count a client by: its IPv4 address, or its IPv6 /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// A lock that a panic elsewhere can't make unusable (the data is counts and buckets: still
/// consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Open connections per socket peer (`SPOOL_MAX_CONNECTIONS_PER_IP`). An address is in
/// the map only while it has connections open.
#[derive(Debug)]
pub struct ConnectionsPerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; dropping it closes the count.
#[derive(Debug)]
pub struct IpConnection {
    owner: Arc<ConnectionsPerIp>,
    key: IpAddr,
}

impl ConnectionsPerIp {
    pub fn new(max: usize) -> Arc<ConnectionsPerIp> {
        Arc::new(ConnectionsPerIp {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection of `peer`, or `None` if it already has the most allowed.
    pub fn try_open(self: &Arc<Self>, peer: IpAddr) -> Option<IpConnection> {
        let key = limit_key(peer);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpConnection {
            owner: self.clone(),
            key,
        })
    }

    /// Connections `peer` has open.
    pub fn open(&self, peer: IpAddr) -> usize {
        lock(&self.open).get(&limit_key(peer)).copied().unwrap_or(0)
    }

    /// Addresses with connections open (the map's size).
    pub fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for IpConnection {
    fn drop(&mut self) {
        let mut open = lock(&self.owner.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// New requests per client address (`SPOOL_REQUESTS_PER_IP_RATE` / `_BURST`), shared by
/// every connection of a server.
#[derive(Debug)]
pub struct RequestLimiter {
    trusted: TrustedProxies,
    buckets: Mutex<KeyedBuckets<IpAddr>>,
}

impl RequestLimiter {
    pub fn new(trusted: TrustedProxies, rate: Rate) -> RequestLimiter {
        RequestLimiter {
            trusted,
            buckets: Mutex::new(KeyedBuckets::new(rate, MAX_TRACKED_CLIENTS)),
        }
    }

    /// The client of a request from `peer` (see [`client_addr`]).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_addr(peer, headers, &self.trusted)
    }

    /// Takes one request from `client`'s bucket, or says how long until it may send one.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        lock(&self.buckets).try_take(&limit_key(client), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn trusted(s: &str) -> TrustedProxies {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_parse_cidrs_and_addresses() {
        let t = trusted(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,");
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("2001:db8::1")));
        // An IPv4 peer seen on a dual-stack socket.
        assert!(t.contains(ip("::ffff:10.9.9.9")));
        // Host bits in a CIDR are ignored.
        assert!(trusted("10.1.2.3/8").contains(ip("10.200.0.1")));
        assert!(trusted("").is_empty());
        assert!(trusted(" , ").is_empty());
        for bad in ["10.0.0.0/33", "ingress", "10.0.0.0/8;10.1.0.0/16", "1.2.3"] {
            let err = bad.parse::<TrustedProxies>().unwrap_err();
            assert!(err.contains("CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let none = TrustedProxies::default();
        let spoofed = xff(&["6.6.6.6"]);
        assert_eq!(client_addr(ip("1.2.3.4"), &spoofed, &none), ip("1.2.3.4"));
        let other = trusted("10.0.0.0/8");
        assert_eq!(client_addr(ip("1.2.3.4"), &spoofed, &other), ip("1.2.3.4"));
        assert_eq!(
            client_addr(ip("1.2.3.4"), &HeaderMap::new(), &other),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn a_trusted_peer_forwards_the_right_most_untrusted_address() {
        let t = trusted("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        assert_eq!(client_addr(peer, &xff(&["1.2.3.4"]), &t), ip("1.2.3.4"));
        // The client claimed 6.6.6.6; our proxy appended what it saw.
        assert_eq!(
            client_addr(peer, &xff(&["6.6.6.6, 1.2.3.4"]), &t),
            ip("1.2.3.4")
        );
        // Two proxies of ours: the one nearer the client appended its address.
        assert_eq!(
            client_addr(peer, &xff(&["6.6.6.6, 1.2.3.4, 10.0.0.9"]), &t),
            ip("1.2.3.4")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client_addr(peer, &xff(&["6.6.6.6", "1.2.3.4,10.0.0.9"]), &t),
            ip("1.2.3.4")
        );
        // Ports and spacing as some proxies write them; IPv6.
        assert_eq!(
            client_addr(peer, &xff(&["1.2.3.4:5678"]), &t),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_addr(peer, &xff(&["[2001:db8::1]:443 ,  "]), &t),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_addr(peer, &xff(&["::ffff:1.2.3.4"]), &t),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn a_trusted_peer_without_a_usable_header_is_the_client() {
        let t = trusted("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        assert_eq!(client_addr(peer, &HeaderMap::new(), &t), peer);
        assert_eq!(client_addr(peer, &xff(&[""]), &t), peer);
        assert_eq!(client_addr(peer, &xff(&[" , ,"]), &t), peer);
        // Garbage where our proxies write: no one is named.
        assert_eq!(client_addr(peer, &xff(&["unknown"]), &t), peer);
        assert_eq!(client_addr(peer, &xff(&["1.2.3.4, nonsense"]), &t), peer);
        assert_eq!(client_addr(peer, &xff(&["1.2.3.4 5.6.7.8"]), &t), peer);
        let mut binary = HeaderMap::new();
        binary.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(client_addr(peer, &binary, &t), peer);
        // Garbage left of the client our proxy saw is not looked at.
        assert_eq!(
            client_addr(peer, &xff(&["<script>, 1.2.3.4"]), &t),
            ip("1.2.3.4")
        );
        // Every hop is ours: the farthest one.
        assert_eq!(
            client_addr(peer, &xff(&["10.0.0.7, 10.0.0.8"]), &t),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn limits_count_ipv6_clients_by_their_64() {
        assert_eq!(limit_key(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            limit_key(ip("2001:db8:1:2:bbbb::2")),
            limit_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:3::1")),
            limit_key(ip("2001:db8:1:2::1"))
        );
    }

    #[test]
    fn connections_per_ip_are_capped_and_forgotten_at_zero() {
        let per_ip = ConnectionsPerIp::new(2);
        let a = ip("1.2.3.4");
        let first = per_ip.try_open(a).unwrap();
        let second = per_ip.try_open(a).unwrap();
        assert!(per_ip.try_open(a).is_none());
        let other = per_ip.try_open(ip("5.6.7.8")).unwrap();
        assert_eq!(per_ip.open(a), 2);
        drop(first);
        assert_eq!(per_ip.open(a), 1);
        let third = per_ip.try_open(a).unwrap();
        drop(second);
        drop(third);
        drop(other);
        assert_eq!(per_ip.addresses(), 0, "the map keeps no closed address");
    }

    #[test]
    fn requests_are_limited_per_client() {
        let limiter = RequestLimiter::new(trusted("127.0.0.1/32"), Rate::new(1, 2));
        let now = Instant::now();
        let proxy = ip("127.0.0.1");
        let alice = limiter.client(proxy, &xff(&["1.1.1.1"]));
        let bob = limiter.client(proxy, &xff(&["2.2.2.2"]));
        assert!(limiter.check(alice, now).is_ok());
        assert!(limiter.check(alice, now).is_ok());
        assert_eq!(limiter.check(alice, now), Err(Duration::from_secs(1)));
        assert!(limiter.check(bob, now).is_ok());
    }
}
