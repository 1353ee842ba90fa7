//! Which addresses a revalidation call may connect to: public ones, plus the networks the
//! operator allows (`SPOOL_ALLOWED_TARGET_NETWORKS`). A site's target URL is chosen by
//! whoever edits the site, so without this it could point the revalidator at loopback,
//! the cluster's private ranges or the cloud's metadata address (169.254.169.254).
//!
//! Pure: classifies addresses, nothing more. The dispatcher applies it where the connection
//! is made — to every address its resolver returns (so a name that resolves to a private
//! address, at any time, is refused: no DNS rebinding) and to IP-literal hosts (which skip
//! the resolver).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The setting that allows more networks (named in every refusal).
pub const SETTING: &str = "SPOOL_ALLOWED_TARGET_NETWORKS";

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 special-purpose ranges (RFC 6890 and successors) that are not public, most
/// specific first: the first match names the range.
const SPECIAL_V4: [(Ipv4Net, &str); 17] = [
    (v4(0, 0, 0, 0, 32), "unspecified"),
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(0, 0, 0, 0, 8), "\"this network\""),
    (v4(10, 0, 0, 0, 8), "private"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space (carrier-grade NAT)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// IPv6 special-purpose ranges that are not public and carry no IPv4 address of their own
/// (those are judged by the address they carry, see [`embedded_v4`]).
const SPECIAL_V6: [(Ipv6Net, &str); 13] = [
    (v6(0, 0, 0, 0, 0, 0, 0, 0, 128), "unspecified"),
    (v6(0, 0, 0, 0, 0, 0, 0, 1, 128), "loopback"),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0, 48), "local-use NAT64"),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0, 64), "discard-only"),
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 32), "Teredo"),
    (v6(0x2001, 2, 0, 0, 0, 0, 0, 0, 48), "benchmarking"),
    (
        v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 23),
        "IETF protocol assignments",
    ),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32), "documentation"),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20), "documentation"),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0, 7), "unique-local"),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0, 10), "link-local"),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0, 10),
        "site-local (deprecated)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0, 8), "multicast"),
];

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedding {
    /// `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible, deprecated) and
    /// `::ffff:0:a.b.c.d` (translated): another spelling of the IPv4 address itself.
    SameHost,
    /// NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`): reaches the IPv4 address
    /// through a gateway.
    Gateway,
}

const NAT64: Ipv6Net = v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0, 96);
const SIX_TO_FOUR: Ipv6Net = v6(0x2002, 0, 0, 0, 0, 0, 0, 0, 16);
const TRANSLATED: Ipv6Net = v6(0, 0, 0, 0, 0xffff, 0, 0, 0, 96);
const COMPATIBLE: Ipv6Net = v6(0, 0, 0, 0, 0, 0, 0, 0, 96);

/// The IPv4 address an IPv6 address carries, if it is one of the forms that do.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, Embedding)> {
    let o = ip.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some((mapped, Embedding::SameHost));
    }
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    if COMPATIBLE.contains(&ip) || TRANSLATED.contains(&ip) {
        return Some((low, Embedding::SameHost));
    }
    if NAT64.contains(&ip) {
        return Some((low, Embedding::Gateway));
    }
    if SIX_TO_FOUR.contains(&ip) {
        return Some((Ipv4Addr::new(o[2], o[3], o[4], o[5]), Embedding::Gateway));
    }
    None
}

/// The special-purpose range `ip` is in, or `None` for a public address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => SPECIAL_V4
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, name)| *name),
        IpAddr::V6(ip) => {
            if let Some((inner, embedding)) = embedded_v4(ip) {
                let found = special_range(IpAddr::V4(inner));
                // Nothing routes IPv4-compatible addresses any more: none is public.
                let compatible = COMPATIBLE.contains(&ip) && embedding == Embedding::SameHost;
                return found.or(compatible.then_some("IPv4-compatible (deprecated)"));
            }
            SPECIAL_V6
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, name)| *name)
        }
    }
}

/// Parses `SPOOL_ALLOWED_TARGET_NETWORKS`: comma-separated CIDR networks (`10.0.0.0/8`,
/// `fd00::/8`) or single addresses; blanks are ignored, so empty means none. The error
/// names every bad entry.
pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    let mut networks = Vec::new();
    let mut bad = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<IpNet>() {
            Ok(net) => networks.push(net.trunc()),
            Err(_) => match entry.parse::<IpAddr>() {
                Ok(ip) => networks.push(IpNet::from(ip)),
                Err(_) => bad.push(format!("{entry:?}")),
            },
        }
    }
    if bad.is_empty() {
        Ok(networks)
    } else {
        Err(format!(
            "{SETTING}: {} not a network (comma-separated CIDRs such as 10.0.0.0/8 or fd00::/8, or single addresses)",
            match bad.as_slice() {
                [one] => format!("{one} is"),
                many => format!("{} are", many.join(", ")),
            }
        ))
    }
}

/// Public addresses, plus the networks the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Vec<IpNet>,
}

/// One address refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub ip: IpAddr,
    pub range: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.ip, self.range)
    }
}

impl DestinationPolicy {
    /// Only public addresses.
    pub fn public_only() -> DestinationPolicy {
        DestinationPolicy::default()
    }

    /// Public addresses and those in `allowed`.
    pub fn allowing(allowed: Vec<IpNet>) -> DestinationPolicy {
        DestinationPolicy { allowed }
    }

    /// The networks allowed besides the public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        let listed = |ip: IpAddr| self.allowed.iter().any(|net| net.contains(&ip));
        if listed(ip) {
            return true;
        }
        // `::ffff:127.0.0.1` is 127.0.0.1: allowing one allows the other.
        match ip {
            IpAddr::V6(v6) => matches!(
                embedded_v4(v6),
                Some((inner, Embedding::SameHost)) if listed(IpAddr::V4(inner))
            ),
            IpAddr::V4(_) => false,
        }
    }

    /// Whether a call may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        match special_range(ip) {
            Some(range) if !self.is_allowed(ip) => Err(Refused { ip, range }),
            _ => Ok(()),
        }
    }

    /// Splits resolved addresses into those a call may use (in their order) and those
    /// refused.
    pub fn filter(
        &self,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> (Vec<IpAddr>, Vec<Refused>) {
        let mut allowed = Vec::new();
        let mut refused = BTreeSet::new();
        for ip in addresses {
            match self.check(ip) {
                Ok(()) if !allowed.contains(&ip) => allowed.push(ip),
                Ok(()) => {}
                Err(r) => {
                    refused.insert(r);
                }
            }
        }
        (allowed, refused.into_iter().collect())
    }
}

/// A target refused because it is (or resolves only to) addresses the policy doesn't
/// allow. Carried through reqwest's error chain from the resolver, so the dispatcher can
/// tell it from a connection error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    /// The URL's host (a name, or the address itself).
    pub host: String,
    /// The host is an address, not a name.
    pub literal: bool,
    pub refused: Vec<Refused>,
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self
            .refused
            .iter()
            .map(Refused::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if self.literal {
            write!(f, "the target's address {list} is not public")?;
        } else {
            write!(
                f,
                "the target's host {} resolves only to addresses that are not public: {list}",
                self.host
            )?;
        }
        write!(f, "; not allowed as a revalidation target (see {SETTING})")
    }
}

impl std::error::Error for NotAllowed {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn range(text: &str) -> Option<&'static str> {
        special_range(ip(text))
    }

    #[test]
    fn public_addresses_are_public() {
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(range(public), None, "{public}");
        }
    }

    #[test]
    fn every_special_ipv4_range_is_named() {
        for (address, expected) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\""),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "shared address space (carrier-grade NAT)"),
            (
                "100.100.100.200",
                "shared address space (carrier-grade NAT)",
            ),
            (
                "100.127.255.255",
                "shared address space (carrier-grade NAT)",
            ),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.10", "documentation"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(range(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn every_special_ipv6_range_is_named() {
        for (address, expected) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("ff05::1:3", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("2001::1", "Teredo"),
            ("2001:10::1", "IETF protocol assignments"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::1", "local-use NAT64"),
        ] {
            assert_eq!(range(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn ipv6_forms_of_special_ipv4_addresses_are_judged_by_the_ipv4_address() {
        for (address, expected) in [
            // IPv4-mapped.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            (
                "::ffff:100.64.0.1",
                "shared address space (carrier-grade NAT)",
            ),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::ffff:255.255.255.255", "broadcast"),
            // IPv4-compatible (deprecated): none is public.
            ("::127.0.0.1", "loopback"),
            ("::169.254.169.254", "link-local"),
            ("::8.8.8.8", "IPv4-compatible (deprecated)"),
            // IPv4-translated.
            ("::ffff:0:192.168.0.1", "private"),
            // NAT64 and 6to4 to a special address.
            ("64:ff9b::169.254.169.254", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:c0a8:101::", "private"),
        ] {
            assert_eq!(range(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn the_default_policy_refuses_every_special_address_and_allows_public_ones() {
        let policy = DestinationPolicy::public_only();
        assert_eq!(policy.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(policy.check(ip("2606:4700::1")), Ok(()));
        assert_eq!(
            policy.check(ip("169.254.169.254")),
            Err(Refused {
                ip: ip("169.254.169.254"),
                range: "link-local"
            })
        );
        for refused in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "fd00::1",
        ] {
            assert!(policy.check(ip(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn allowed_networks_override_exactly_what_they_cover() {
        let policy = DestinationPolicy::allowing(
            parse_networks("127.0.0.0/8, ::1/128,10.1.0.0/16").unwrap(),
        );
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("127.9.9.9")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
        // The IPv4-mapped form of an allowed address is the same host.
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("10.1.200.3")), Ok(()));
        assert_eq!(policy.check(ip("8.8.8.8")), Ok(()));
        for refused in [
            "10.2.0.1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "192.168.0.1",
            // Through a NAT64 gateway is another path: it needs its own entry.
            "64:ff9b::7f00:1",
        ] {
            assert!(policy.check(ip(refused)).is_err(), "{refused}");
        }
        let metadata = DestinationPolicy::allowing(parse_networks("169.254.169.254").unwrap());
        assert_eq!(metadata.check(ip("169.254.169.254")), Ok(()));
        assert!(metadata.check(ip("169.254.169.253")).is_err());
        let v6 = DestinationPolicy::allowing(parse_networks("fd00::/8").unwrap());
        assert_eq!(v6.check(ip("fd12::1")), Ok(()));
        assert!(v6.check(ip("fc00::1")).is_err());
    }

    #[test]
    fn resolved_addresses_are_filtered_in_order() {
        let policy = DestinationPolicy::public_only();
        let (allowed, refused) = policy.filter([
            ip("10.0.0.1"),
            ip("8.8.8.8"),
            ip("127.0.0.1"),
            ip("1.1.1.1"),
            ip("8.8.8.8"),
            ip("10.0.0.1"),
        ]);
        assert_eq!(allowed, [ip("8.8.8.8"), ip("1.1.1.1")]);
        assert_eq!(
            refused,
            [
                Refused {
                    ip: ip("10.0.0.1"),
                    range: "private"
                },
                Refused {
                    ip: ip("127.0.0.1"),
                    range: "loopback"
                },
            ]
        );
    }

    #[test]
    fn the_setting_parses_cidrs_and_addresses_and_names_bad_entries() {
        assert_eq!(parse_networks("").unwrap(), []);
        assert_eq!(parse_networks(" , ").unwrap(), []);
        assert_eq!(
            parse_networks("127.0.0.0/8,::1/128, 10.1.2.3/16 ,192.168.1.5").unwrap(),
            [
                "127.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
                "192.168.1.5/32".parse().unwrap(),
            ]
        );
        let err = parse_networks("10.0.0.0/8,intranet,10.0.0.0/33").unwrap_err();
        assert!(err.starts_with("SPOOL_ALLOWED_TARGET_NETWORKS: "), "{err}");
        assert!(
            err.contains("\"intranet\", \"10.0.0.0/33\" are not"),
            "{err}"
        );
        let err = parse_networks("localhost").unwrap_err();
        assert!(err.contains("\"localhost\" is not a network"), "{err}");
    }

    #[test]
    fn refusals_say_what_and_name_the_setting() {
        let literal = NotAllowed {
            host: "127.0.0.1".into(),
            literal: true,
            refused: vec![Refused {
                ip: ip("127.0.0.1"),
                range: "loopback",
            }],
        };
        assert_eq!(
            literal.to_string(),
            "the target's address 127.0.0.1 (loopback) is not public; not allowed as a revalidation target (see SPOOL_ALLOWED_TARGET_NETWORKS)"
        );
        let name = NotAllowed {
            host: "metadata.internal".into(),
            literal: false,
            refused: vec![Refused {
                ip: ip("169.254.169.254"),
                range: "link-local",
            }],
        };
        assert_eq!(
            name.to_string(),
            "the target's host metadata.internal resolves only to addresses that are not public: 169.254.169.254 (link-local); not allowed as a revalidation target (see SPOOL_ALLOWED_TARGET_NETWORKS)"
        );
    }
}
