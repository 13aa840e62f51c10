//! Upstream safety: tenant-supplied upstream URLs must not reach loopback, private,
//! link-local or metadata addresses unless the operator allows it (SSRF).
//!
//! Two layers: [`check_upstream_url`] refuses a bad URL when a connection is created
//! (literal addresses and what the name resolves to then), and [`GuardedResolver`] is
//! the gateway HTTP client's DNS resolver, so a name that later resolves to a private
//! address (DNS rebinding) is refused at connect time too. The gateway's client follows
//! no redirects, so a provider key is never sent to a host other than the connection's.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Url;

/// Why an upstream URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("base_url is not a valid URL: {0}")]
    Invalid(String),
    #[error("base_url must use http or https")]
    Scheme,
    #[error("base_url must not contain credentials")]
    Credentials,
    #[error("base_url has no host")]
    NoHost,
    #[error(
        "base_url points at a private, loopback, link-local or metadata address ({0}); the operator must allow private upstreams for this"
    )]
    Private(IpAddr),
    #[error("base_url's host {0} does not resolve")]
    Unresolvable(String),
}

/// Whether `ip` is an address a tenant must not reach by default: loopback,
/// private, link-local (including cloud metadata at 169.254.169.254), carrier-grade
/// NAT, unspecified, broadcast, multicast, documentation and benchmarking ranges,
/// unique-local IPv6, and IPv4 embedded in IPv6 (mapped, NAT64) that is any of these.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 address.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return is_forbidden_v4(v4(seg[6], seg[7]));
    }
    // Local-use NAT64 64:ff9b:1::/48 (RFC 8215) translates to networks of the operator's
    // own choosing: never a public provider.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return true;
    }
    // 6to4 2002::/16 carries the IPv4 address of its relay end in bits 16..48.
    if seg[0] == 0x2002 && is_forbidden_v4(v4(seg[1], seg[2])) {
        return true;
    }
    // Teredo 2001::/32 carries the client's IPv4 address, inverted, in the last 32 bits.
    if seg[0] == 0x2001 && seg[1] == 0 && is_forbidden_v4(v4(!seg[6], !seg[7])) {
        return true;
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site local fec0::/10 (deprecated)
        || seg[..4] == [0x100, 0, 0, 0] // discard-only 100::/64
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || seg[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
}

/// Parses and checks an upstream base URL; resolves its host unless it is a literal.
pub async fn check_upstream_url(raw: &str, allow_private: bool) -> Result<Url, UrlError> {
    let url = Url::parse(raw).map_err(|e| UrlError::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err(UrlError::NoHost),
    };
    if allow_private {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    match host {
        url::Host::Ipv4(ip) => check_ip(IpAddr::V4(ip))?,
        url::Host::Ipv6(ip) => check_ip(IpAddr::V6(ip))?,
        url::Host::Domain(name) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| UrlError::Unresolvable(name.to_owned()))?
                .collect();
            if addrs.is_empty() {
                return Err(UrlError::Unresolvable(name.to_owned()));
            }
            for a in addrs {
                check_ip(a.ip())?;
            }
        }
    }
    Ok(url)
}

fn check_ip(ip: IpAddr) -> Result<(), UrlError> {
    if is_forbidden_ip(ip) {
        Err(UrlError::Private(ip))
    } else {
        Ok(())
    }
}

/// The guarded resolver refused a name: it resolves only to forbidden addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} resolves only to private or loopback addresses, which upstreams may not use")]
pub struct PrivateAddressRefused(pub String);

/// Whether an error (or anything in its source chain) is a [`PrivateAddressRefused`].
pub fn is_private_address_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<PrivateAddressRefused>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A DNS resolver for the upstream HTTP client that drops forbidden addresses, so
/// connection-time resolution cannot be steered to a private address.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_forbidden_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(PrivateAddressRefused(host));
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            // Local-use NAT64, whatever it embeds.
            "64:ff9b:1::808:808",
            "64:ff9b:1:7f00:1::",
            // 6to4 of private and loopback addresses.
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::1",
            // Teredo with an inverted loopback client address.
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "fec0::1",
            "100::1",
        ] {
            assert!(
                is_forbidden_ip(ip.parse().unwrap()),
                "{ip} should be forbidden"
            );
        }
        for ip in [
            "8.8.8.8",
            "104.18.7.192",
            "2606:4700::6810:84e5",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(
                !is_forbidden_ip(ip.parse().unwrap()),
                "{ip} should be allowed"
            );
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        for bad in [
            "http://127.0.0.1:8080/v1",
            "http://[::1]/v1",
            "http://10.0.0.1/v1",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/v1",
            "http://0x7f.1/v1",
        ] {
            assert!(
                matches!(
                    check_upstream_url(bad, false).await,
                    Err(UrlError::Private(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            check_upstream_url("ftp://x/", false).await,
            Err(UrlError::Scheme)
        );
        assert_eq!(
            check_upstream_url("https://u:p@93.184.215.14/", false).await,
            Err(UrlError::Credentials)
        );
        assert!(matches!(
            check_upstream_url("not a url", false).await,
            Err(UrlError::Invalid(_))
        ));
        assert!(
            check_upstream_url("https://93.184.215.14/v1", false)
                .await
                .is_ok()
        );
        assert!(
            check_upstream_url("http://127.0.0.1:8080/v1", true)
                .await
                .is_ok()
        );
    }

    proptest::proptest! {
        #[test]
        fn v4_mapped_v6_agrees_with_v4(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            proptest::prop_assert_eq!(is_forbidden_v4(v4), is_forbidden_ip(IpAddr::V6(v4.to_ipv6_mapped())));
        }
    }
}
