#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use sg_policy::client_ip::{MAX_XFF_BYTES, MAX_XFF_ENTRIES};
use sg_policy::{TrustedProxies, client_ip};

fn trusted() -> TrustedProxies {
    TrustedProxies::parse(["10.0.0.0/8", "127.0.0.1/32", "::1/128"]).unwrap()
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
        any::<[u8; 3]>().prop_map(|b| IpAddr::V4(Ipv4Addr::new(10, b[0], b[1], b[2]))),
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|b| IpAddr::V4(Ipv4Addr::new(10, b[0], b[1], b[2]))),
        any::<[u8; 3]>()
            .prop_map(|b| IpAddr::V6(Ipv4Addr::new(10, b[0], b[1], b[2]).to_ipv6_mapped())),
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    any_ip().prop_filter("untrusted", |ip| !trusted().contains(*ip))
}

/// One of the accepted textual forms of an address.
fn render(ip: IpAddr) -> impl Strategy<Value = String> {
    (0u8..5, any::<u16>(), "[ \t]{0,2}", "[ \t]{0,2}").prop_map(move |(form, port, l, r)| {
        let body = match (ip, form) {
            (IpAddr::V4(a), 1) => format!("{a}:{port}"),
            (IpAddr::V6(a), 1) => format!("[{a}]"),
            (IpAddr::V6(a), 2) => format!("[{a}]:{port}"),
            (IpAddr::V6(a), 3) if a.to_ipv4_mapped().is_none() => {
                // Fully expanded form.
                let s = a.segments();
                format!(
                    "{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}",
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
                )
            }
            _ => ip.to_string(),
        };
        format!("{l}{body}{r}")
    })
}

/// Anything a client might put in a header: addresses, trusted addresses,
/// garbage, non-ASCII, long runs.
fn junk_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,80}",
        any_ip().prop_flat_map(render),
        proptest::collection::vec(any_ip().prop_flat_map(render), 0..6).prop_map(|v| v.join(",")),
        Just("unknown".to_owned()),
        (0usize..20_000).prop_map(|n| "1".repeat(n)),
        (0usize..3_000).prop_map(|n| "1.2.3.4,".repeat(n)),
        Just("é,".repeat(5_000)),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

proptest! {
    /// An untrusted peer is always the client, whatever the headers say.
    #[test]
    fn untrusted_peer_is_the_client(
        peer in untrusted_ip(),
        headers in proptest::collection::vec(junk_value(), 0..5),
    ) {
        let got = client_ip(peer, &refs(&headers), &trusted());
        prop_assert_eq!(got, peer.to_canonical());
    }

    /// Nobody is trusted: the peer is always the client.
    #[test]
    fn empty_trust_list_is_the_peer(
        peer in any_ip(),
        headers in proptest::collection::vec(junk_value(), 0..5),
    ) {
        let got = client_ip(peer, &refs(&headers), &TrustedProxies::none());
        prop_assert_eq!(got, peer.to_canonical());
    }

    /// Whatever a client prepends, the address the trusted proxies recorded
    /// wins.
    #[test]
    fn spoofed_prefix_never_changes_the_result(
        client in untrusted_ip(),
        hops in proptest::collection::vec(trusted_ip(), 0..6),
        peer in trusted_ip(),
        prefix in proptest::collection::vec(junk_value(), 0..4),
        layout in 0u8..3,
        rendered_seed in any::<u64>(),
    ) {
        // Render the real chain with a deterministic choice of forms.
        let mut real: Vec<String> = Vec::new();
        for (i, ip) in std::iter::once(client).chain(hops.iter().copied()).enumerate() {
            let form = (rendered_seed >> ((i % 16) * 4)) & 3;
            let s = match (ip, form) {
                (IpAddr::V4(a), 1) => format!("{a}:443"),
                (IpAddr::V6(a), 1) => format!("[{a}]:443"),
                (IpAddr::V6(a), 2) => format!("[{a}]"),
                _ => ip.to_string(),
            };
            real.push(s);
        }
        let mut headers = prefix.clone();
        match layout {
            // The first proxy appends to the client's last header value.
            0 if !headers.is_empty() => {
                let last = headers.len() - 1;
                headers[last] = format!("{}, {}", headers[last], real.join(", "));
            }
            // Each hop adds its own header line.
            1 => headers.extend(real.iter().cloned()),
            // One new header line for the whole real chain.
            _ => headers.push(real.join(", ")),
        }
        let got = client_ip(peer, &refs(&headers), &trusted());
        prop_assert_eq!(got, client.to_canonical());
        let unspoofed = client_ip(peer, &[real.join(", ").as_str()], &trusted());
        prop_assert_eq!(got, unspoofed);
    }

    /// A chain of trusted hops only: the leftmost one.
    #[test]
    fn all_trusted_is_leftmost(
        hops in proptest::collection::vec(trusted_ip(), 1..MAX_XFF_ENTRIES),
        peer in trusted_ip(),
    ) {
        let header = hops.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let got = client_ip(peer, &[header.as_str()], &trusted());
        prop_assert_eq!(got, hops[0].to_canonical());
    }

    /// Arbitrary, oversized and malformed headers never panic, and the
    /// result is either the peer or an address present in the headers.
    #[test]
    fn arbitrary_headers_never_panic(
        peer in trusted_ip(),
        headers in proptest::collection::vec(junk_value(), 0..8),
    ) {
        let got = client_ip(peer, &refs(&headers), &trusted());
        if got != peer.to_canonical() {
            let joined = headers.join(",");
            let found = joined.split(',').any(|e| {
                let e = e.trim().trim_start_matches('[');
                let e = e.split(']').next().unwrap_or(e);
                e.parse::<IpAddr>().map(|ip| ip.to_canonical()) == Ok(got)
                    || e.rsplit_once(':')
                        .and_then(|(h, _)| h.parse::<IpAddr>().ok())
                        .map(|ip| ip.to_canonical())
                        == Some(got)
            });
            prop_assert!(found, "{got} not in headers");
        }
    }
}

#[test]
fn oversized_single_header_is_bounded() {
    let t = trusted();
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let huge = "a".repeat(10 * 1024 * 1024);
    assert_eq!(client_ip(peer, &[huge.as_str()], &t), peer);
    let many = ",".repeat(1024 * 1024);
    assert_eq!(client_ip(peer, &[many.as_str()], &t), peer);
    let padded = format!("1.2.3.4,{}", " ".repeat(MAX_XFF_BYTES));
    assert_eq!(client_ip(peer, &[padded.as_str()], &t), peer);
}
