//! Address text as the spec accepts it (RULES.md GEN-13, AMB-54, AMB-59).
//!
//! An IP literal is a strict dotted quad or RFC 4291 IPv6 text (no brackets, no zone); anything
//! else must be an RFC 1123 host name whose last label is not all digits. Parsing happens once, in
//! the constructor checks; machines only ever see [`Remote`] and [`IpAddr`].

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::error::SocketError;

/// A validated host name (not an IP literal). Compares case-insensitively.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
pub struct HostName(Arc<str>);

impl HostName {
    /// Parses `text` as an RFC 1123 host name with a non-numeric last label.
    pub fn parse(text: &str) -> Result<HostName, SocketError> {
        if is_host_name(text) {
            Ok(HostName(Arc::from(text)))
        } else {
            Err(SocketError::invalid_access().with_message(format!("not a valid host name: {text:?}")))
        }
    }

    /// The name as the caller gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for HostName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for HostName {}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for HostName {
    type Error = SocketError;
    fn try_from(text: String) -> Result<Self, SocketError> {
        HostName::parse(&text)
    }
}

impl From<HostName> for String {
    fn from(name: HostName) -> String {
        name.0.to_string()
    }
}

/// A remote address: an IP literal or a host name to resolve during opening.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Remote {
    /// An IP literal, compared by value.
    Ip(IpAddr),
    /// A host name, compared case-insensitively.
    Name(HostName),
}

impl Remote {
    /// Parses a remote address (GEN-13). Invalid text is `InvalidAccessError`.
    pub fn parse(text: &str) -> Result<Remote, SocketError> {
        match parse_ip_literal(text) {
            Some(ip) => Ok(Remote::Ip(ip)),
            None => HostName::parse(text).map(Remote::Name),
        }
    }

    /// The IP literal, if this is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Remote::Ip(ip) => Some(*ip),
            Remote::Name(_) => None,
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Ip(ip) => write!(f, "{ip}"),
            Remote::Name(name) => write!(f, "{name}"),
        }
    }
}

/// Parses a strict IP literal: four decimal parts 0–255 without leading zeros, or RFC 4291 IPv6
/// text without brackets or zone index.
pub fn parse_ip_literal(text: &str) -> Option<IpAddr> {
    // std's parsers are already strict (no "127.1", no "010.0.0.1", no brackets, no "%zone").
    if let Ok(v4) = text.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Parses a `localAddress` or multicast group: IP literals only. Anything else is
/// `InvalidAccessError`.
pub fn parse_local_address(text: &str) -> Result<IpAddr, SocketError> {
    parse_ip_literal(text)
        .ok_or_else(|| SocketError::invalid_access().with_message(format!("not an IP literal: {text:?}")))
}

/// Parses a multicast group address (UDP-MCAST-03): an IP literal in 224.0.0.0/4 or ff00::/8.
pub fn parse_multicast_group(text: &str) -> Result<IpAddr, SocketError> {
    let ip = parse_local_address(text)?;
    if ip.is_multicast() {
        Ok(ip)
    } else {
        Err(SocketError::invalid_access().with_message(format!("not a multicast address: {text:?}")))
    }
}

/// Canonical text of an address learned from the OS (AMB-54): dotted quad, RFC 5952, and IPv4-mapped
/// IPv6 shown as plain IPv4.
pub fn canonical(ip: IpAddr) -> String {
    canonical_with(ip, |text| text.to_owned())
}

/// [`canonical`] handed to `make` as a borrowed `&str` (IPv4 text is made on the stack): the
/// caller picks the owner, an inline string say, with no allocation in between.
pub fn canonical_with<T>(ip: IpAddr, make: impl FnOnce(&str) -> T) -> T {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => make(dotted_quad(v4).as_str()),
            None => make(&v6.to_string()),
        },
        IpAddr::V4(v4) => make(dotted_quad(v4).as_str()),
    }
}

/// IPv4 text, at most 15 bytes, on the stack.
struct DottedQuad {
    text: [u8; 15],
    len: usize,
}

impl DottedQuad {
    fn push(&mut self, digit: u8) {
        self.text[self.len] = digit;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and dots were pushed.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

/// `v4.to_string()` without the formatting machinery: every accepted connection names its peer
/// this way, and `Display` (padding support, seven writes) cost more than the rest of the text.
fn dotted_quad(v4: Ipv4Addr) -> DottedQuad {
    let mut text = DottedQuad { text: [0; 15], len: 0 };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push(b'.');
        }
        if octet >= 100 {
            text.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            text.push(b'0' + octet / 10 % 10);
        }
        text.push(b'0' + octet % 10);
    }
    text
}

fn is_host_name(text: &str) -> bool {
    if text.is_empty() || text.len() > 253 {
        return false;
    }
    let mut last = "";
    for label in text.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !ok {
            return false;
        }
        last = label;
    }
    !last.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorName;

    // rule: AMB-54
    #[test]
    fn canonical_ipv4_text_is_what_display_writes() {
        // Every octet width at every position, and the IPv4-mapped IPv6 form.
        for octets in [[0, 0, 0, 0], [127, 0, 0, 1], [9, 10, 99, 100], [255, 254, 200, 7], [1, 22, 133, 244]]
        {
            let v4 = Ipv4Addr::from(octets);
            assert_eq!(canonical(IpAddr::V4(v4)), v4.to_string());
            assert_eq!(canonical(IpAddr::V6(v4.to_ipv6_mapped())), v4.to_string());
        }
        for octet in 0..=255u8 {
            let v4 = Ipv4Addr::new(octet, 255 - octet, octet / 3, octet % 10);
            assert_eq!(canonical(IpAddr::V4(v4)), v4.to_string());
        }
    }

    // rule: GEN-13, UDP-CTOR-03, TCP-CTOR-02, ERR-04
    #[test]
    fn invalid_remotes_are_invalid_access_errors() {
        for bad in [
            "300.1.1.1",
            "1.2.3.4.5",
            "127.1",
            "010.0.0.1",
            "a..b",
            "-a.test",
            "",
            "[::1]",
            "::1%lo",
            "a b",
            "x.-y",
            "host.123",
        ] {
            let err = Remote::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorName::InvalidAccessError, "{bad:?}");
        }
        let long_label = "a".repeat(64);
        assert!(Remote::parse(&long_label).is_err());
        let long_name = ["abc"; 64].join(".");
        assert!(long_name.len() > 253 && Remote::parse(&long_name).is_err());
    }

    // rule: GEN-13
    #[test]
    fn valid_remotes_parse_and_compare_by_value() {
        assert_eq!(Remote::parse("localhost").unwrap(), Remote::Name(HostName::parse("LOCALHOST").unwrap()));
        assert!(matches!(Remote::parse("Svc-1.test"), Ok(Remote::Name(_))));
        assert_eq!(Remote::parse("::1").unwrap(), Remote::parse("0:0:0:0:0:0:0:1").unwrap());
        assert_eq!(Remote::parse("127.0.0.1").unwrap().ip(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(matches!(Remote::parse("1a.example"), Ok(Remote::Name(_))));
    }

    // rule: UDP-MCAST-03, ERR-05
    #[test]
    fn multicast_groups_must_be_multicast_literals() {
        assert!(parse_multicast_group("239.255.0.1").is_ok());
        assert!(parse_multicast_group("ff02::1").is_ok());
        for bad in ["127.0.0.1", "localhost", "", "::1"] {
            assert_eq!(parse_multicast_group(bad).unwrap_err().kind(), ErrorName::InvalidAccessError);
        }
    }

    #[test]
    fn canonical_text_unmaps_ipv4() {
        assert_eq!(canonical("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(canonical("0:0:0:0:0:0:0:1".parse().unwrap()), "::1");
    }
}
