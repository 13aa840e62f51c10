//! Property targets for the PROXY v2 parser: arbitrary bytes never panic and never make
//! it read past its limit; a header built to the specification, for any addresses and
//! any TLVs, parses back to those addresses, and every prefix of it is `Incomplete`.
//! Run longer with `PROPTEST_CASES=1000000 cargo test -p sg-proxyproto --test fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use sg_proxyproto::{FIXED_HEADER_LEN, ParseStatus, ProxyHeader, SIGNATURE, parse_v2};

/// A version 2 `PROXY` header for TCP between `src` and `dst` (same family), with
/// `tlvs` bytes of type-length-value data appended.
fn header(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            0x21
        }
        _ => unreachable!(),
    };
    addresses.extend_from_slice(&src.port().to_be_bytes());
    addresses.extend_from_slice(&dst.port().to_be_bytes());
    for (kind, value) in tlvs {
        addresses.push(*kind);
        addresses.extend_from_slice(&(value.len() as u16).to_be_bytes());
        addresses.extend_from_slice(value);
    }
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    out.push(family);
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out
}

fn pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| { (SocketAddr::from((a, p)), SocketAddr::from((b, q))) }),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| { (SocketAddr::from((a, p)), SocketAddr::from((b, q))) }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), limit in 0usize..70_000) {
        let _ = parse_v2(&bytes, limit);
        // After the signature, anything.
        let mut signed = SIGNATURE.to_vec();
        signed.extend_from_slice(&bytes);
        if let Ok(ParseStatus::Complete { header_len, .. }) = parse_v2(&signed, limit) {
            prop_assert!(header_len <= signed.len());
            prop_assert!(header_len >= FIXED_HEADER_LEN);
        }
    }

    #[test]
    fn headers_parse_back_and_prefixes_are_incomplete(
        (src, dst) in pair(),
        tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..4),
        trailing in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let bytes = header(src, dst, &tlvs);
        let mut stream = bytes.clone();
        stream.extend_from_slice(&trailing);
        match parse_v2(&stream, 65_551).unwrap() {
            ParseStatus::Complete { header, header_len } => {
                prop_assert_eq!(header_len, bytes.len());
                prop_assert_eq!(header, ProxyHeader::Proxy { source: src, destination: dst });
            }
            other => prop_assert!(false, "{other:?}"),
        }
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse_v2(&bytes[..cut], 65_551), Ok(ParseStatus::Incomplete), "prefix {}", cut);
        }
    }
}
