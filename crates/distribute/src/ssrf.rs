//! The SSRF guard for webhooks.
//!
//! A webhook URL is chosen by a subscriber, so it must not reach what only the server can
//! reach: loopback, private networks, link-local and cloud metadata addresses, CGNAT,
//! multicast, documentation and reserved ranges, and the same addresses hidden inside IPv6
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo). Operators can allow networks
//! explicitly (`webhook.allow_networks`).
//!
//! The check happens at connect time in the client's DNS resolver ([`GuardedResolver`]), so
//! the address checked is the address dialled: a name that resolves to a public address at
//! registration and to 127.0.0.1 later (DNS rebinding) is refused when it matters. URLs with
//! an IP literal never reach a resolver and are checked by [`AddressPolicy::check_url`].

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is not reachable from webhooks, if it is not.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "a 'this network' address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a carrier-grade NAT address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([169, 254, 0, 0], 16, "a link-local address (cloud metadata lives here)"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved or broadcast address"),
    ];
    RANGES.iter().find(|(net, p, _)| in4(ip, *net, *p)).map(|r| r.2)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that carry an IPv4 address: judge the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).or(None);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96)
        return v4_reason(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    if s[0] == 0x2002 {
        // 6to4 (2002::/16) embeds the IPv4 address in segments 1–2.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return v4_reason(v4).map(|_| "a 6to4 address wrapping a forbidden IPv4 address");
    }
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        return Some("an IPv4-compatible address (deprecated)");
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("a unique local (private) address"),
        x if x & 0xffc0 == 0xfe80 => Some("a link-local address"),
        x if x & 0xffc0 == 0xfec0 => Some("a site-local address"),
        x if x & 0xff00 == 0xff00 => Some("a multicast address"),
        0x2001 if s[1] == 0x0db8 => Some("a documentation address"),
        0x2001 if s[1] == 0 => Some("a Teredo address"),
        0x0100 if s[1..4] == [0, 0, 0] => Some("a discard address"),
        _ => None,
    }
}

/// A destination the guard refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "SSRF guard: {target} is {reason}; webhooks may not reach it (allow it in webhook.allow_networks if you must)"
)]
pub struct Refused {
    pub target: String,
    pub reason: &'static str,
}

/// What webhooks may reach: everything public, plus networks the operator allows.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// `allow` holds CIDR networks (`10.20.0.0/16`, `::1/128`) or single addresses.
    pub fn new(allow: &[String]) -> Result<AddressPolicy, String> {
        let allow = allow
            .iter()
            .map(|a| {
                a.parse::<IpNet>().or_else(|_| a.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                    format!(
                        "webhook.allow_networks: `{a}` is not a network (e.g. 10.20.0.0/16) or an address"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AddressPolicy { allow })
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let allowed = |ip: IpAddr| self.allow.iter().any(|n| n.contains(&ip));
        let canonical = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match forbidden_reason(ip) {
            Some(_) if allowed(ip) || allowed(canonical) => Ok(()),
            Some(reason) => Err(Refused { target: ip.to_string(), reason }),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (hostnames are checked when resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)),
            _ => Ok(()),
        }
    }
}

/// A reqwest DNS resolver that refuses names resolving to forbidden addresses. Every address
/// a name resolves to must pass: a mix of public and private answers is refused whole.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy
                    .check(a.ip())
                    .map_err(|r| Refused { target: format!("{host} ({})", r.target), reason: r.reason })?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &AddressPolicy, a: &str) -> Option<&'static str> {
        p.check(a.parse().unwrap()).err().map(|r| r.reason)
    }

    #[test]
    fn refuses_every_internal_form() {
        let p = AddressPolicy::default();
        let forbidden = [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.170",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.88.99.1",
            "::1",
            "::",
            "fe80::1",
            "fe80::1ff:fe23:4567:890a",
            "fc00::1",
            "fd00:ec2::254",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
        ];
        for a in forbidden {
            assert!(refused(&p, a).is_some(), "{a} must be refused");
        }
        assert_eq!(refused(&p, "169.254.169.254"), Some("a link-local address (cloud metadata lives here)"));
        assert_eq!(refused(&p, "::ffff:127.0.0.1"), Some("a loopback address"), "judged by the IPv4 inside");
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "11.0.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4009:81f::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in public {
            assert!(refused(&p, a).is_none(), "{a} is public");
        }
    }

    #[test]
    fn allow_list_opens_only_what_it_names() {
        let p = AddressPolicy::new(&["127.0.0.0/8".into(), "fd00:1::/32".into(), "10.1.2.3".into()]).unwrap();
        assert!(refused(&p, "127.0.0.1").is_none());
        assert!(refused(&p, "::ffff:127.0.0.1").is_none(), "the mapped form of an allowed address");
        assert!(refused(&p, "10.1.2.3").is_none());
        assert!(refused(&p, "10.1.2.4").is_some());
        assert!(refused(&p, "fd00:1::5").is_none());
        assert!(refused(&p, "fd00:2::5").is_some());
        assert!(refused(&p, "169.254.169.254").is_some());
        let err = AddressPolicy::new(&["localhost".into()]).unwrap_err();
        assert!(err.contains("localhost"));
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let p = AddressPolicy::default();
        let e = p.check_url(&url::Url::parse("http://[::ffff:7f00:1]:8080/hook").unwrap()).unwrap_err();
        assert_eq!((e.target.as_str(), e.reason), ("::ffff:127.0.0.1", "a loopback address"));
        assert!(e.to_string().starts_with("SSRF guard: ::ffff:127.0.0.1 is a loopback address"), "{e}");
        assert!(p.check_url(&url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap()).is_err());
        assert!(p.check_url(&url::Url::parse("https://soc.example.nhs.uk/hook").unwrap()).is_ok());
    }
}
