//! PROXY protocol version 2 header parsing.
//!
//! The binary framing is decoded by [`ppp`]; this module adds the policy a
//! TCP gateway needs on top of it: an upper bound on the header size that is
//! enforced as soon as the length field is known, refusal of version 1 (text)
//! headers, and refusal of `PROXY` headers that do not describe a TCP
//! connection over IPv4 or IPv6.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use ppp::v2;

/// The 12-byte signature every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Size of the fixed part of a version 2 header: signature, version/command,
/// family/protocol and the 16-bit length of the rest.
pub const FIXED_HEADER_LEN: usize = 16;

/// Largest header the wire format can express (fixed part plus a 16-bit length).
pub const PROTOCOL_MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + u16::MAX as usize;

/// Smallest size limit accepted by [`parse_v2`]: a TCP over IPv6 header
/// without TLVs (16 + 36 bytes).
pub const MIN_HEADER_LIMIT: usize = FIXED_HEADER_LEN + 36;

/// Start of a version 1 (text) header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a version 2 header says about the connection it precedes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `LOCAL` command: the connection was opened by the proxy itself (for
    /// example a health check). The real peer address of the TCP connection
    /// applies and any address block is ignored.
    Local,
    /// `PROXY` command for a TCP connection: `source` is the original client,
    /// `destination` the address the client connected to on the proxy.
    Proxy {
        /// The original client address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

/// Result of feeding the bytes received so far to [`parse_v2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStatus {
    /// A complete, acceptable header occupies the first `header_len` bytes of
    /// the buffer; anything after it belongs to the proxied stream.
    Complete {
        /// The decoded header.
        header: ProxyHeader,
        /// Number of bytes the header occupies.
        header_len: usize,
    },
    /// The bytes so far are a valid beginning of a header; more are needed.
    Incomplete,
}

/// Why a header (or what should have been one) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The data does not start with the version 2 signature.
    #[error("missing PROXY protocol v2 signature")]
    Signature,
    /// A version 1 (text) header; only version 2 is accepted.
    #[error("PROXY protocol v1 (text) header is not accepted")]
    V1NotAccepted,
    /// The version nibble is not 2.
    #[error("unsupported PROXY protocol version nibble {0:#x}")]
    Version(u8),
    /// The command nibble is neither LOCAL nor PROXY.
    #[error("invalid PROXY protocol command {0:#x}")]
    Command(u8),
    /// The address family nibble is not a defined value.
    #[error("invalid PROXY protocol address family {0:#x}")]
    AddressFamily(u8),
    /// The transport protocol nibble is not a defined value.
    #[error("invalid PROXY protocol transport protocol {0:#x}")]
    Protocol(u8),
    /// A `PROXY` command for something other than TCP over IPv4 or IPv6.
    #[error("PROXY command for {0} is not supported (only TCP over IPv4/IPv6)")]
    UnsupportedTransport(&'static str),
    /// The header announces more bytes than allowed.
    #[error("PROXY protocol header of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong {
        /// Total header length announced by the length field.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The length field is too small for the announced address family.
    #[error("PROXY protocol header is malformed: {0}")]
    Malformed(String),
}

/// Parses a PROXY protocol version 2 header at the start of `buf`.
///
/// Returns [`ParseStatus::Incomplete`] while `buf` is a valid prefix of a
/// header that is not finished yet, so callers can read more and call again.
/// A header whose total length (as announced by its length field) exceeds
/// `max_len` is refused as soon as the length field has arrived. `max_len` is
/// clamped to `MIN_HEADER_LIMIT..=PROTOCOL_MAX_HEADER_LEN`.
///
/// TLVs are skipped (their bytes count towards the header length but are not
/// interpreted).
pub fn parse_v2(buf: &[u8], max_len: usize) -> Result<ParseStatus, HeaderError> {
    let limit = max_len.clamp(MIN_HEADER_LIMIT, PROTOCOL_MAX_HEADER_LEN);

    let sig_len = buf.len().min(SIGNATURE.len());
    if buf[..sig_len] != SIGNATURE[..sig_len] {
        let v1_len = buf.len().min(V1_PREFIX.len());
        if v1_len > 0 && buf[..v1_len] == V1_PREFIX[..v1_len] {
            return Err(HeaderError::V1NotAccepted);
        }
        return Err(HeaderError::Signature);
    }
    if buf.len() < FIXED_HEADER_LEN {
        // Check what has arrived of the fixed part before waiting for more,
        // so garbage after a valid signature is refused early.
        if let Some(&ver_cmd) = buf.get(12) {
            check_version_command(ver_cmd)?;
        }
        if let Some(&fam_proto) = buf.get(13) {
            check_family_protocol(fam_proto)?;
        }
        return Ok(ParseStatus::Incomplete);
    }

    let ver_cmd = buf[12];
    let fam_proto = buf[13];
    check_version_command(ver_cmd)?;
    check_family_protocol(fam_proto)?;
    let total = FIXED_HEADER_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > limit {
        return Err(HeaderError::TooLong { len: total, limit });
    }

    let parsed = match v2::Header::try_from(buf) {
        Ok(parsed) => parsed,
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => {
            return Ok(ParseStatus::Incomplete);
        }
        Err(v2::ParseError::Prefix) => return Err(HeaderError::Signature),
        Err(v2::ParseError::Version(v)) => return Err(HeaderError::Version(v >> 4)),
        Err(v2::ParseError::Command(c)) => return Err(HeaderError::Command(c)),
        Err(v2::ParseError::AddressFamily(a)) => return Err(HeaderError::AddressFamily(a >> 4)),
        Err(v2::ParseError::Protocol(p)) => return Err(HeaderError::Protocol(p)),
        Err(other) => return Err(HeaderError::Malformed(other.to_string())),
    };
    let header_len = parsed.len();
    if header_len != total {
        return Err(HeaderError::Malformed(format!(
            "decoded {header_len} bytes, length field announced {total}"
        )));
    }

    let header = match parsed.command {
        v2::Command::Local => ProxyHeader::Local,
        v2::Command::Proxy => {
            if parsed.protocol != v2::Protocol::Stream {
                return Err(HeaderError::UnsupportedTransport(match parsed.protocol {
                    v2::Protocol::Datagram => "UDP",
                    _ => "an unspecified transport",
                }));
            }
            match parsed.addresses {
                v2::Addresses::IPv4(a) => ProxyHeader::Proxy {
                    source: SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port)),
                    destination: SocketAddr::V4(SocketAddrV4::new(
                        a.destination_address,
                        a.destination_port,
                    )),
                },
                v2::Addresses::IPv6(a) => ProxyHeader::Proxy {
                    source: SocketAddr::V6(SocketAddrV6::new(
                        a.source_address,
                        a.source_port,
                        0,
                        0,
                    )),
                    destination: SocketAddr::V6(SocketAddrV6::new(
                        a.destination_address,
                        a.destination_port,
                        0,
                        0,
                    )),
                },
                v2::Addresses::Unix(_) => {
                    return Err(HeaderError::UnsupportedTransport("a UNIX socket"));
                }
                v2::Addresses::Unspecified => {
                    return Err(HeaderError::UnsupportedTransport(
                        "an unspecified address family",
                    ));
                }
            }
        }
    };
    Ok(ParseStatus::Complete { header, header_len })
}

fn check_version_command(byte: u8) -> Result<(), HeaderError> {
    let version = byte >> 4;
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    let command = byte & 0x0f;
    if command > 1 {
        return Err(HeaderError::Command(command));
    }
    Ok(())
}

fn check_family_protocol(byte: u8) -> Result<(), HeaderError> {
    let family = byte >> 4;
    if family > 3 {
        return Err(HeaderError::AddressFamily(family));
    }
    let protocol = byte & 0x0f;
    if protocol > 2 {
        return Err(HeaderError::Protocol(protocol));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LIMIT: usize = 4096;

    /// Builds a header by hand: signature, version/command, family/protocol,
    /// big-endian length, then `body`.
    fn raw(ver_cmd: u8, fam_proto: u8, body: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam_proto);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn tcp4_body(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn tcp6_body(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse_v2(buf, LIMIT) {
            Ok(ParseStatus::Complete { header, header_len }) => (header, header_len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    #[test]
    fn tcp4_proxy() {
        let buf = raw(
            0x21,
            0x11,
            &tcp4_body([203, 0, 113, 7], 5555, [10, 0, 0, 1], 443),
        );
        let (header, len) = complete(&buf);
        assert_eq!(len, 28);
        assert_eq!(
            header,
            ProxyHeader::Proxy {
                source: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 5555)),
                destination: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 443)),
            }
        );
    }

    #[test]
    fn tcp6_proxy() {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let buf = raw(0x21, 0x21, &tcp6_body(src, 40000, dst, 8443));
        let (header, len) = complete(&buf);
        assert_eq!(len, 52);
        assert_eq!(
            header,
            ProxyHeader::Proxy {
                source: SocketAddr::from((src, 40000)),
                destination: SocketAddr::from((dst, 8443)),
            }
        );
    }

    #[test]
    fn local_unspec() {
        let buf = raw(0x20, 0x00, &[]);
        assert_eq!(complete(&buf), (ProxyHeader::Local, 16));
    }

    #[test]
    fn local_with_address_block_ignores_addresses() {
        let body = tcp4_body([1, 2, 3, 4], 1, [5, 6, 7, 8], 2);
        let buf = raw(0x20, 0x11, &body);
        assert_eq!(complete(&buf), (ProxyHeader::Local, 28));
    }

    #[test]
    fn tlvs_are_skipped_and_counted() {
        let mut body = tcp4_body([198, 51, 100, 9], 1234, [10, 1, 2, 3], 80);
        body.extend(tlv(0xEA, b"\x01vpce-0123456789abcdef")); // AWS VPC endpoint id
        body.extend(tlv(0x04, &[])); // NOOP, empty
        body.extend(tlv(0x03, &[0xde, 0xad, 0xbe, 0xef])); // CRC32C (not verified)
        let buf = raw(0x21, 0x11, &body);
        let (header, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(
            header,
            ProxyHeader::Proxy {
                source: "198.51.100.9:1234".parse().unwrap(),
                destination: "10.1.2.3:80".parse().unwrap(),
            }
        );
    }

    #[test]
    fn trailing_payload_is_not_part_of_the_header() {
        let mut buf = raw(
            0x21,
            0x11,
            &tcp4_body([203, 0, 113, 7], 5555, [10, 0, 0, 1], 443),
        );
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (_, len) = complete(&buf);
        assert_eq!(len, 28);
        assert_eq!(&buf[len..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let mut body = tcp6_body(Ipv6Addr::LOCALHOST, 1, Ipv6Addr::LOCALHOST, 2);
        body.extend(tlv(0xEA, b"\x01vpce-1"));
        let buf = raw(0x21, 0x21, &body);
        for cut in 0..buf.len() {
            assert_eq!(
                parse_v2(&buf[..cut], LIMIT),
                Ok(ParseStatus::Incomplete),
                "prefix of {cut} bytes"
            );
        }
        assert!(matches!(
            parse_v2(&buf, LIMIT),
            Ok(ParseStatus::Complete { header_len, .. }) if header_len == buf.len()
        ));
    }

    #[test]
    fn wrong_signature() {
        assert_eq!(
            parse_v2(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", LIMIT),
            Err(HeaderError::Signature)
        );
        // Refused as soon as the first differing byte arrives.
        assert_eq!(parse_v2(b"G", LIMIT), Err(HeaderError::Signature));
        assert_eq!(
            parse_v2(b"\r\n\r\n\0\r\nQUIX", LIMIT),
            Err(HeaderError::Signature)
        );
        let mut buf = raw(0x21, 0x11, &tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2));
        buf[5] ^= 0xff;
        assert_eq!(parse_v2(&buf, LIMIT), Err(HeaderError::Signature));
        // TLS ClientHello straight to the listener.
        assert_eq!(
            parse_v2(&[0x16, 0x03, 0x01, 0x02, 0x00], LIMIT),
            Err(HeaderError::Signature)
        );
    }

    #[test]
    fn v1_text_header_refused() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(parse_v2(v1, LIMIT), Err(HeaderError::V1NotAccepted));
        assert_eq!(
            parse_v2(b"PROXY UNKNOWN\r\n", LIMIT),
            Err(HeaderError::V1NotAccepted)
        );
        assert_eq!(parse_v2(b"PRO", LIMIT), Err(HeaderError::V1NotAccepted));
    }

    #[test]
    fn empty_buffer_is_incomplete() {
        assert_eq!(parse_v2(&[], LIMIT), Ok(ParseStatus::Incomplete));
    }

    #[test]
    fn oversized_refused_as_soon_as_length_is_known() {
        let mut body = tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        body.extend(tlv(0xE0, &vec![0u8; 5000]));
        let buf = raw(0x21, 0x11, &body);
        let expected = Err(HeaderError::TooLong {
            len: buf.len(),
            limit: LIMIT,
        });
        assert_eq!(parse_v2(&buf[..16], LIMIT), expected);
        assert_eq!(parse_v2(&buf, LIMIT), expected);
        // The same header fits under a larger limit.
        assert!(matches!(
            parse_v2(&buf, 8192),
            Ok(ParseStatus::Complete { .. })
        ));
        // Maximum length field against the default-sized limit.
        let mut max = raw(0x21, 0x11, &[]);
        max[14] = 0xff;
        max[15] = 0xff;
        assert_eq!(
            parse_v2(&max, LIMIT),
            Err(HeaderError::TooLong {
                len: PROTOCOL_MAX_HEADER_LEN,
                limit: LIMIT
            })
        );
    }

    #[test]
    fn limit_is_clamped() {
        let buf = raw(
            0x21,
            0x21,
            &tcp6_body(Ipv6Addr::LOCALHOST, 1, Ipv6Addr::LOCALHOST, 2),
        );
        assert!(matches!(
            parse_v2(&buf, 0),
            Ok(ParseStatus::Complete { header_len: 52, .. })
        ));
        let mut long = buf.clone();
        long.extend(tlv(0x04, &[0]));
        let len = long.len() - 16;
        long[14..16].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        assert_eq!(
            parse_v2(&long, 0),
            Err(HeaderError::TooLong {
                len: 56,
                limit: MIN_HEADER_LIMIT
            })
        );
    }

    #[test]
    fn bad_version_and_command() {
        let body = tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        assert_eq!(
            parse_v2(&raw(0x11, 0x11, &body), LIMIT),
            Err(HeaderError::Version(1))
        );
        assert_eq!(
            parse_v2(&raw(0x31, 0x11, &body), LIMIT),
            Err(HeaderError::Version(3))
        );
        assert_eq!(
            parse_v2(&raw(0x22, 0x11, &body), LIMIT),
            Err(HeaderError::Command(2))
        );
        assert_eq!(
            parse_v2(&raw(0x2f, 0x11, &body), LIMIT),
            Err(HeaderError::Command(0xf))
        );
        // Refused before the rest of the fixed header arrives.
        let partial = raw(0x11, 0x11, &body);
        assert_eq!(
            parse_v2(&partial[..13], LIMIT),
            Err(HeaderError::Version(1))
        );
    }

    #[test]
    fn bad_family_and_protocol() {
        let body = tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        assert_eq!(
            parse_v2(&raw(0x21, 0x41, &body), LIMIT),
            Err(HeaderError::AddressFamily(4))
        );
        assert_eq!(
            parse_v2(&raw(0x21, 0x13, &body), LIMIT),
            Err(HeaderError::Protocol(3))
        );
        let partial = raw(0x21, 0x41, &body);
        assert_eq!(
            parse_v2(&partial[..14], LIMIT),
            Err(HeaderError::AddressFamily(4))
        );
    }

    #[test]
    fn proxy_requires_tcp_over_ip() {
        let body4 = tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        // UDP over IPv4.
        assert_eq!(
            parse_v2(&raw(0x21, 0x12, &body4), LIMIT),
            Err(HeaderError::UnsupportedTransport("UDP"))
        );
        // PROXY with AF_UNSPEC.
        assert!(matches!(
            parse_v2(&raw(0x21, 0x00, &[]), LIMIT),
            Err(HeaderError::UnsupportedTransport(_))
        ));
        // PROXY over a UNIX stream socket.
        assert!(matches!(
            parse_v2(&raw(0x21, 0x31, &[0u8; 216]), LIMIT),
            Err(HeaderError::UnsupportedTransport(_))
        ));
        // IPv4 family with an unspecified transport.
        assert!(matches!(
            parse_v2(&raw(0x21, 0x10, &body4), LIMIT),
            Err(HeaderError::UnsupportedTransport(_))
        ));
    }

    #[test]
    fn length_too_short_for_family() {
        // IPv4 needs 12 address bytes; announce 8.
        let buf = raw(0x21, 0x11, &[1, 1, 1, 1, 2, 2, 2, 2]);
        assert!(matches!(
            parse_v2(&buf, LIMIT),
            Err(HeaderError::Malformed(_))
        ));
        // IPv6 needs 36; announce 12.
        let buf = raw(0x21, 0x21, &tcp4_body([1, 1, 1, 1], 1, [2, 2, 2, 2], 2));
        assert!(matches!(
            parse_v2(&buf, LIMIT),
            Err(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn agrees_with_independent_builder() {
        let source: SocketAddr = "[2001:db8::42]:61000".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let built = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .write_tlv(v2::Type::NoOp, &[1, 2, 3])
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(
            complete(&built),
            (
                ProxyHeader::Proxy {
                    source,
                    destination
                },
                built.len()
            )
        );
    }
}
