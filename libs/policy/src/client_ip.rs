//! The true client address of a request that may have passed through
//! trusted reverse proxies.
//!
//! # Rule
//!
//! [`client_ip`] takes the TCP peer address, every `X-Forwarded-For` header
//! value in the order received, and the set of [`TrustedProxies`]:
//!
//! 1. Every address is normalized first: an IPv4-mapped IPv6 address
//!    (`::ffff:a.b.c.d`) becomes the IPv4 address `a.b.c.d`.
//! 2. If the peer is **not** trusted, the headers are ignored entirely and
//!    the peer is the client. Nothing a client sends can change this.
//! 3. Otherwise the header values are read as one comma-separated list (the
//!    values joined in order) **from right to left**. The walk starts at the
//!    peer; each entry is the address that the hop to its right saw:
//!    * an empty entry (only spaces/tabs) is skipped;
//!    * a trusted address becomes the current position and the walk goes on;
//!    * the first untrusted address is the client, and is returned;
//!    * a malformed entry ends the walk, and so does the end of the list or
//!      the work cap below. The address the walk last reached is returned.
//!      That address is always the peer or a trusted proxy — the nearest
//!      trusted hop's own view — never an address a client could choose.
//!
//! So "if every entry is trusted, the leftmost one is the client" and "a
//! malformed entry stops the walk at the last good candidate" are the same
//! rule: the answer is the last address reached.
//!
//! Entries may be `a.b.c.d`, `a.b.c.d:port`, an IPv6 address with or without
//! brackets, or `[v6]:port` (an unbracketed IPv6 entry is read as an address
//! only, never as address plus port). Anything else (`unknown`, obfuscated
//! identifiers, zone ids, quoted strings, ports above 65535, over-long
//! entries, invalid UTF-8 parts) is malformed.
//!
//! # Work cap
//!
//! At most [`MAX_XFF_ENTRIES`] entries and [`MAX_XFF_BYTES`] bytes are
//! considered, both counted **from the right**, where the trusted proxies
//! append. Anything beyond the cap, including an entry cut by the byte cap,
//! counts as malformed. Counting from the right means a client cannot push
//! the entries that trusted proxies append out of the window by sending a
//! large header: its own prefix is what falls off.
//!
//! # Why this fails safe
//!
//! Entries to the left of the first untrusted address were written by a
//! party that is not trusted and are never read. A malformed or truncated
//! entry can only stop the walk early, which yields a trusted hop's address
//! instead of a client-chosen one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// At most this many `X-Forwarded-For` entries are considered, counted from
/// the right. Empty entries count.
pub const MAX_XFF_ENTRIES: usize = 64;

/// At most this many bytes of `X-Forwarded-For` are considered, counted from
/// the right (each entry costs its length plus one separator).
pub const MAX_XFF_BYTES: usize = 8 * 1024;

/// Longest syntactically valid entry is
/// `[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535` (53 bytes).
const MAX_ENTRY_LEN: usize = 64;

/// The networks whose addresses are trusted reverse proxies.
///
/// An empty set trusts nobody: every request's client is its TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A trusted-proxy entry that is neither a CIDR nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted proxy entry #{index} ({entry:?}) is not an IP address or CIDR")]
pub struct TrustedProxiesError {
    /// Position of the bad entry in the input (0-based).
    pub index: usize,
    /// The bad entry, shortened to at most 64 characters.
    pub entry: String,
}

impl TrustedProxies {
    /// Trusts nobody.
    #[must_use]
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Trusts exactly these networks.
    #[must_use]
    pub fn from_nets(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Parses CIDR strings such as `"10.0.0.0/8"` or `"::1/128"`. A bare
    /// address (`"127.0.0.1"`) means that single host. Surrounding
    /// whitespace is ignored. An empty list trusts nobody.
    ///
    /// # Errors
    ///
    /// The first entry that is neither a CIDR nor an address.
    pub fn parse<I, S>(cidrs: I) -> Result<Self, TrustedProxiesError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for (index, raw) in cidrs.into_iter().enumerate() {
            let raw = raw.as_ref();
            match parse_net(raw) {
                Some(net) => nets.push(net),
                None => {
                    return Err(TrustedProxiesError {
                        index,
                        entry: raw.chars().take(64).collect(),
                    });
                }
            }
        }
        Ok(Self(nets))
    }

    /// The trusted networks.
    #[must_use]
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether nobody is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in a trusted network. IPv4 and IPv4-mapped IPv6 forms
    /// of one address are treated alike.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net_contains(net, ip))
    }
}

/// Parses `"a.b.c.d/n"`, `"v6/n"` or a bare address (a host network).
pub(crate) fn parse_net(raw: &str) -> Option<IpNet> {
    let s = raw.trim();
    if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Whether `net` contains `ip`, treating an IPv4 address and its
/// IPv4-mapped IPv6 form as the same address.
pub(crate) fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip.to_canonical()) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
        // A canonical IPv6 address is never IPv4-mapped.
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    }
}

/// The client address of a request; see the [module docs](self) for the
/// exact rule. `xff` holds every `X-Forwarded-For` header value in the order
/// received. Never panics; does bounded work whatever the input.
#[must_use]
pub fn client_ip(peer: IpAddr, xff: &[&str], trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut current = peer;
    let mut budget = MAX_XFF_BYTES;
    let mut entries = 0usize;
    for value in xff.iter().rev() {
        let bytes = value.as_bytes();
        let cut = bytes.len().saturating_sub(budget);
        let window = bytes.get(cut..).unwrap_or_default();
        let mut tokens = window.rsplit(|&b| b == b',').peekable();
        while let Some(token) = tokens.next() {
            let leftmost = tokens.peek().is_none();
            if leftmost && cut > 0 {
                // This entry was cut by the byte cap.
                return current;
            }
            entries += 1;
            if entries > MAX_XFF_ENTRIES {
                return current;
            }
            budget = budget.saturating_sub(token.len() + 1);
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(token) else {
                return current;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            current = ip;
        }
    }
    current
}

/// Parses one trimmed `X-Forwarded-For` entry.
fn parse_entry(token: &[u8]) -> Option<IpAddr> {
    if token.len() > MAX_ENTRY_LEN {
        return None;
    }
    let s = std::str::from_utf8(token).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let v6: Ipv6Addr = inner.parse().ok()?;
        if !after.is_empty() {
            valid_port(after.strip_prefix(':')?)?;
        }
        return Some(IpAddr::V6(v6).to_canonical());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (host, port) = s.rsplit_once(':')?;
    let v4: Ipv4Addr = host.parse().ok()?;
    valid_port(port)?;
    Some(IpAddr::V4(v4))
}

fn valid_port(port: &str) -> Option<()> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse(["10.0.0.0/8", "127.0.0.1/32", "::1/128"]).unwrap()
    }

    #[test]
    fn parse_accepts_cidrs_and_bare_addresses() {
        let t = TrustedProxies::parse([" 10.0.0.0/8 ", "192.168.1.1", "fd00::/8"]).unwrap();
        assert_eq!(t.nets().len(), 3);
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("192.168.1.1")));
        assert!(!t.contains(ip("192.168.1.2")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("::ffff:10.9.9.9")));
    }

    #[test]
    fn parse_rejects_garbage() {
        let err = TrustedProxies::parse(["10.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.entry, "nope");
        assert!(TrustedProxies::parse(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse([""]).is_err());
    }

    #[test]
    fn empty_list_trusts_nobody() {
        let t = TrustedProxies::parse(Vec::<String>::new()).unwrap();
        assert!(t.is_empty());
        assert_eq!(
            client_ip(ip("127.0.0.1"), &["1.2.3.4"], &t),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["1.2.3.4", "5.6.7.8"], &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["6.6.6.6, 1.2.3.4, 10.0.0.2"], &t),
            ip("1.2.3.4")
        );
        // Several header values are one list.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["6.6.6.6", "1.2.3.4", "10.0.0.2"], &t),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &["1.2.3.4"], &t), ip("1.2.3.4"));
        assert_eq!(
            client_ip(ip("::1"), &["2001:db8::1"], &t),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn no_header_means_peer() {
        let t = trusted();
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &t), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &[""], &t), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &[" , ,"], &t), ip("10.0.0.1"));
    }

    #[test]
    fn all_trusted_means_leftmost() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["10.0.0.3, 10.0.0.2"], &t),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn malformed_entry_stops_at_last_trusted_hop() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["1.2.3.4, garbage, 10.0.0.2"], &t),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &["unknown"], &t), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["1.2.3.4, 1.2.3.4:99999"], &t),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["fe80::1%eth0"], &t),
            ip("10.0.0.1")
        );
        // Garbage to the left of the client is never read.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["garbage, 1.2.3.4"], &t),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn accepted_entry_forms() {
        let t = trusted();
        let peer = ip("10.0.0.1");
        for (entry, want) in [
            ("1.2.3.4", "1.2.3.4"),
            ("  1.2.3.4\t", "1.2.3.4"),
            ("1.2.3.4:8080", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("[::ffff:1.2.3.4]:1", "1.2.3.4"),
        ] {
            assert_eq!(client_ip(peer, &[entry], &t), ip(want), "{entry}");
        }
        for entry in [
            "1.2.3.4:",
            "1.2.3.4:x",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[1.2.3.4]",
            "2001:db8::1:443:",
            "01.2.3.4",
            "\"1.2.3.4\"",
            "_hidden",
        ] {
            assert_eq!(client_ip(peer, &[entry], &t), peer, "{entry}");
        }
    }

    #[test]
    fn mapped_peer_is_normalized() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &["1.2.3.4"], &t),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &["1.2.3.4"], &t),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn entry_cap_counts_from_the_right() {
        let t = trusted();
        let mut list: Vec<String> = vec!["1.2.3.4".into()];
        for i in 0..MAX_XFF_ENTRIES {
            list.push(format!("10.0.{}.{}", i / 200, i % 200 + 1));
        }
        let header = list.join(",");
        // 65 entries: the untrusted one is beyond the cap.
        let got = client_ip(ip("10.0.0.1"), &[header.as_str()], &t);
        assert_eq!(got, ip("10.0.0.1"));
        // Drop one trusted hop: exactly 64 entries, the client is reached.
        let header = list[..MAX_XFF_ENTRIES].join(",");
        let got = client_ip(ip("10.0.0.1"), &[header.as_str()], &t);
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn byte_cap_counts_from_the_right() {
        let t = trusted();
        let big = format!("{}, 1.2.3.4", "9".repeat(100_000));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &[big.as_str()], &t),
            ip("1.2.3.4")
        );
        // A trusted hop's entry cut in half by the cap is not read as another
        // address ("11.2.3.4" must not become "1.2.3.4").
        let pad = MAX_XFF_BYTES - "1.2.3.4".len() - 1;
        let header = format!("11.2.3.4,{}", " ".repeat(pad));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &[header.as_str()], &t),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn many_empty_values_are_bounded() {
        let t = trusted();
        let mut values = vec!["1.2.3.4"];
        values.extend(std::iter::repeat_n("", 10_000));
        assert_eq!(client_ip(ip("10.0.0.1"), &values, &t), ip("10.0.0.1"));
    }
}
