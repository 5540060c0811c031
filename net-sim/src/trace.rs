//! [`TraceLog`]: the kept trace lines, packed into one byte log.
//!
//! A simulation keeps up to [`TRACE_LINES_KEPT`](crate::TRACE_LINES_KEPT) lines, one or more per
//! datagram. Kept as `(Duration, Line)` values they cost about 150 bytes each: a UDP run wrote
//! megabytes of fresh memory, and the page faults and cache misses of that memory cost more
//! wall-clock time than the delivery itself. Packed they cost about a tenth: times and ids are
//! deltas from the previous line (ids mostly grow by one, times by a step), and a datagram line
//! whose addresses repeat the previous datagram line's stores a flag instead. The usual datagram
//! line (addresses repeated, small forward deltas) has a fixed layout of 17 bytes, written without
//! a loop; every other line is varints.
//!
//! Only [`TraceLog`] writes the log and reads it back, so it is always well-formed; a reader that
//! met a malformed byte would stop there (no panic).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use crate::net::{Line, UdpFate};
use crate::tcp::Gone;

// Tags: the line's kind in the low five bits; bits 5 and 6 say a datagram line repeats the
// previous datagram line's `from` and `dest`; bit 7 marks the fixed layout (see `compact`).
const TEXT: u8 = 0;
const UDP_LOCAL: u8 = 1;
const UDP_PARTITIONED: u8 = 2;
const UDP_LOST: u8 = 3;
const UDP_ARRIVES: u8 = 4;
const UDP_FROM_TURMOIL: u8 = 5;
const UDP_FROM_TURMOIL_PARTITIONED: u8 = 6;
const UDP_FROM_TURMOIL_UNBOUND: u8 = 7;
const UDP_DUPLICATE: u8 = 8;
const UDP_DROPPED: u8 = 9;
const TCP_CONNECTED: u8 = 10;
const TCP_ACCEPTED: u8 = 11;
const TCP_RELEASED: u8 = 12;
const KIND: u8 = 0x1f;
const SAME_FROM: u8 = 0x20;
const SAME_DEST: u8 = 0x40;
const COMPACT: u8 = 0x80;

/// The fixed layout: tag, time delta (u32 ns), id delta (u16), length (u16), socket id (u32),
/// arrival delay (u32 ns; 0 for a local delivery), little-endian.
const COMPACT_LEN: usize = 17;

/// The longest encoding of one line: tag, time (19), id (10), two IPv6 socket addresses
/// (1 + 16 + 2 + 5 + 5 each), length (10), a socket id (10) and an arrival time (19).
const MAX_LINE: usize = 1 + 19 + 10 + 2 * 29 + 10 + 10 + 19;

/// One kept line, as [`TraceLog::entries`] gives it back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Entry {
    /// A text line of `len` bytes (text lines follow one another in the trace's text).
    Text(usize),
    /// A structured line and its time.
    Line(Duration, Line),
}

/// The delta state both the writer and the reader keep.
#[derive(Clone, Copy, Default)]
struct Cursor {
    /// Time of the previous structured line.
    at: Duration,
    /// Id of the previous structured line.
    id: u64,
    /// Addresses of the previous datagram line.
    from: Option<SocketAddr>,
    dest: Option<SocketAddr>,
}

/// The kept lines of a trace, packed (see the module documentation).
#[derive(Default)]
pub(crate) struct TraceLog {
    bytes: Vec<u8>,
    lines: usize,
    cursor: Cursor,
}

impl TraceLog {
    /// Lines kept.
    pub(crate) fn len(&self) -> usize {
        self.lines
    }

    /// Keeps a text line of `len` bytes.
    pub(crate) fn push_text(&mut self, len: usize) {
        let mut buf = Buf::new();
        buf.byte(TEXT);
        buf.varint(len as u128);
        self.bytes.extend_from_slice(buf.bytes());
        self.lines += 1;
    }

    /// Keeps a structured line.
    pub(crate) fn push_line(&mut self, at: Duration, line: &Line) {
        if let Line::Udp { id, from, dest, len, fate } = *line {
            if let Some(bytes) = self.compact(at, id, from, dest, len, fate) {
                self.bytes.extend_from_slice(&bytes);
                self.lines += 1;
                return;
            }
        }
        self.push_varints(at, line);
    }

    /// The fixed layout of a datagram line, when it applies (the cursor then moves on): a local
    /// delivery or an arrival, the previous datagram line's addresses, and every delta forward
    /// and small.
    #[inline]
    #[allow(clippy::too_many_arguments, reason = "the fields of one line")]
    fn compact(
        &mut self,
        at: Duration,
        id: u64,
        from: SocketAddr,
        dest: SocketAddr,
        len: usize,
        fate: UdpFate,
    ) -> Option<[u8; COMPACT_LEN]> {
        let c = &mut self.cursor;
        // Under a second each (`Duration` arithmetic: no 128-bit nanoseconds on this path).
        let below_second = |d: Duration| (d.as_secs() == 0).then(|| d.subsec_nanos());
        let (kind, to, delay) = match fate {
            UdpFate::Arrives { to, at: arrives } => {
                (UDP_ARRIVES, to, below_second(arrives.checked_sub(at)?)?)
            }
            UdpFate::Local { to } => (UDP_LOCAL, to, 0),
            _ => return None,
        };
        let step = below_second(at.checked_sub(c.at)?)?;
        let next = u16::try_from(id.checked_sub(c.id)?).ok()?;
        let (len, to) = (u16::try_from(len).ok()?, u32::try_from(to).ok()?);
        if c.from != Some(from) || c.dest != Some(dest) {
            return None;
        }
        (c.at, c.id) = (at, id);
        let mut out = [0u8; COMPACT_LEN];
        out[0] = kind | SAME_FROM | SAME_DEST | COMPACT;
        out[1..5].copy_from_slice(&step.to_le_bytes());
        out[5..7].copy_from_slice(&next.to_le_bytes());
        out[7..9].copy_from_slice(&len.to_le_bytes());
        out[9..13].copy_from_slice(&to.to_le_bytes());
        out[13..17].copy_from_slice(&delay.to_le_bytes());
        Some(out)
    }

    /// Keeps a structured line as varints (every line the fixed layout does not fit).
    #[inline(never)]
    fn push_varints(&mut self, at: Duration, line: &Line) {
        let mut buf = Buf::new();
        let c = &mut self.cursor;
        let nanos = at.as_nanos() as i128; // below 2^95: no overflow in the differences
        let tag_at = buf.len;
        buf.byte(0); // the tag, set below
        buf.signed(nanos - c.at.as_nanos() as i128);
        c.at = at;
        // Every line kind has an id, written next (as the reader reads it, before the kind's
        // fields).
        let id = line.id();
        buf.signed(i128::from(id.wrapping_sub(c.id) as i64));
        c.id = id;
        let tag = match *line {
            Line::Udp { from, dest, len, fate, .. } => {
                let mut tag = match fate {
                    UdpFate::Local { .. } => UDP_LOCAL,
                    UdpFate::Partitioned { .. } => UDP_PARTITIONED,
                    UdpFate::Lost { .. } => UDP_LOST,
                    UdpFate::Arrives { .. } => UDP_ARRIVES,
                    UdpFate::FromTurmoil => UDP_FROM_TURMOIL,
                    UdpFate::FromTurmoilPartitioned => UDP_FROM_TURMOIL_PARTITIONED,
                    UdpFate::FromTurmoilUnbound => UDP_FROM_TURMOIL_UNBOUND,
                };
                if c.from == Some(from) {
                    tag |= SAME_FROM;
                } else {
                    buf.socket(from);
                    c.from = Some(from);
                }
                if c.dest == Some(dest) {
                    tag |= SAME_DEST;
                } else {
                    buf.socket(dest);
                    c.dest = Some(dest);
                }
                buf.varint(len as u128);
                match fate {
                    UdpFate::Local { to } | UdpFate::Partitioned { to } | UdpFate::Lost { to } => {
                        buf.varint(u128::from(to));
                    }
                    UdpFate::Arrives { to, at: arrives } => {
                        buf.varint(u128::from(to));
                        buf.signed(arrives.as_nanos() as i128 - nanos);
                    }
                    UdpFate::FromTurmoil | UdpFate::FromTurmoilPartitioned | UdpFate::FromTurmoilUnbound => {}
                }
                tag
            }
            Line::UdpDuplicate { of, .. } => {
                buf.varint(u128::from(of));
                UDP_DUPLICATE
            }
            Line::UdpDropped { host, port, .. } => {
                buf.ip(host);
                buf.varint(u128::from(port));
                UDP_DROPPED
            }
            Line::TcpConnected { local, peer, .. } => {
                buf.socket(local);
                buf.socket(peer);
                TCP_CONNECTED
            }
            Line::TcpAccepted { origin, local, .. } => {
                buf.socket(origin);
                buf.socket(local);
                TCP_ACCEPTED
            }
            Line::TcpReleased { gone, .. } => {
                buf.byte(match gone {
                    Gone::Closed => 0,
                    Gone::Reset => 1,
                    Gone::Silent => 2,
                });
                TCP_RELEASED
            }
        };
        buf.data[tag_at] = tag;
        self.bytes.extend_from_slice(buf.bytes());
        self.lines += 1;
    }

    /// The kept lines, in order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let mut reader = Reader { bytes: &self.bytes, pos: 0, cursor: Cursor::default() };
        std::iter::from_fn(move || reader.entry())
    }
}

/// One line's encoding, built on the stack and appended at once.
struct Buf {
    data: [u8; MAX_LINE],
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf { data: [0; MAX_LINE], len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    fn byte(&mut self, b: u8) {
        self.data[self.len] = b;
        self.len += 1;
    }

    fn slice(&mut self, bytes: &[u8]) {
        self.data[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// LEB128.
    fn varint(&mut self, mut n: u128) {
        while n >= 0x80 {
            self.byte((n as u8) | 0x80);
            n >>= 7;
        }
        self.byte(n as u8);
    }

    /// Zigzag, then LEB128 (small magnitudes of either sign stay short).
    fn signed(&mut self, n: i128) {
        self.varint(((n << 1) ^ (n >> 127)) as u128);
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.byte(4);
                self.slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.byte(6);
                self.slice(&a.octets());
            }
        }
    }

    fn socket(&mut self, addr: SocketAddr) {
        self.ip(addr.ip());
        self.slice(&addr.port().to_le_bytes());
        if let SocketAddr::V6(a) = addr {
            self.varint(u128::from(a.flowinfo()));
            self.varint(u128::from(a.scope_id()));
        }
    }
}

/// Reads the log back (`None` at its end, or at a malformed byte).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    cursor: Cursor,
}

impl Reader<'_> {
    fn entry(&mut self) -> Option<Entry> {
        let tag = self.byte()?;
        if tag == TEXT {
            return Some(Entry::Text(usize::try_from(self.varint()?).ok()?));
        }
        if tag & COMPACT != 0 {
            return self.compact(tag);
        }
        let at = (self.cursor.at.as_nanos() as i128).checked_add(self.signed()?)?;
        self.cursor.at = duration(at)?;
        let id = self.cursor.id.wrapping_add(i64::try_from(self.signed()?).ok()? as u64);
        self.cursor.id = id;
        let line = match tag & KIND {
            kind @ UDP_LOCAL..=UDP_FROM_TURMOIL_UNBOUND => {
                let from = if tag & SAME_FROM != 0 { self.cursor.from? } else { self.socket()? };
                let dest = if tag & SAME_DEST != 0 { self.cursor.dest? } else { self.socket()? };
                (self.cursor.from, self.cursor.dest) = (Some(from), Some(dest));
                let len = usize::try_from(self.varint()?).ok()?;
                let fate = match kind {
                    UDP_LOCAL => UdpFate::Local { to: self.u64()? },
                    UDP_PARTITIONED => UdpFate::Partitioned { to: self.u64()? },
                    UDP_LOST => UdpFate::Lost { to: self.u64()? },
                    UDP_ARRIVES => {
                        let to = self.u64()?;
                        let arrives = at.checked_add(self.signed()?)?;
                        UdpFate::Arrives { to, at: duration(arrives)? }
                    }
                    UDP_FROM_TURMOIL => UdpFate::FromTurmoil,
                    UDP_FROM_TURMOIL_PARTITIONED => UdpFate::FromTurmoilPartitioned,
                    _ => UdpFate::FromTurmoilUnbound,
                };
                Line::Udp { id, from, dest, len, fate }
            }
            UDP_DUPLICATE => Line::UdpDuplicate { id, of: self.u64()? },
            UDP_DROPPED => {
                let host = self.ip()?;
                let port = u16::try_from(self.varint()?).ok()?;
                Line::UdpDropped { id, host, port }
            }
            TCP_CONNECTED => Line::TcpConnected { id, local: self.socket()?, peer: self.socket()? },
            TCP_ACCEPTED => Line::TcpAccepted { id, origin: self.socket()?, local: self.socket()? },
            TCP_RELEASED => {
                let gone = match self.byte()? {
                    0 => Gone::Closed,
                    1 => Gone::Reset,
                    2 => Gone::Silent,
                    _ => return None,
                };
                Line::TcpReleased { id, gone }
            }
            _ => return None,
        };
        Some(Entry::Line(self.cursor.at, line))
    }

    /// A line in the fixed layout (see [`TraceLog::compact`]).
    fn compact(&mut self, tag: u8) -> Option<Entry> {
        let step = u32::from_le_bytes(self.array()?);
        let next = u16::from_le_bytes(self.array()?);
        let len = u16::from_le_bytes(self.array()?);
        let to = u64::from(u32::from_le_bytes(self.array()?));
        let delay = u32::from_le_bytes(self.array()?);
        let c = &mut self.cursor;
        c.at = c.at.checked_add(Duration::from_nanos(u64::from(step)))?;
        c.id = c.id.checked_add(u64::from(next))?;
        let fate = match tag & KIND {
            UDP_ARRIVES => {
                UdpFate::Arrives { to, at: c.at.checked_add(Duration::from_nanos(u64::from(delay)))? }
            }
            UDP_LOCAL => UdpFate::Local { to },
            _ => return None,
        };
        let line = Line::Udp { id: c.id, from: c.from?, dest: c.dest?, len: usize::from(len), fate };
        Some(Entry::Line(c.at, line))
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let a = self.bytes.get(self.pos..self.pos + N)?.try_into().ok()?;
        self.pos += N;
        Some(a)
    }

    fn varint(&mut self) -> Option<u128> {
        let mut n = 0u128;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            n |= u128::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(n);
            }
        }
        None
    }

    fn signed(&mut self) -> Option<i128> {
        let z = self.varint()?;
        Some((z >> 1) as i128 ^ -((z & 1) as i128))
    }

    fn u64(&mut self) -> Option<u64> {
        u64::try_from(self.varint()?).ok()
    }

    fn ip(&mut self) -> Option<IpAddr> {
        match self.byte()? {
            4 => Some(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => None,
        }
    }

    fn socket(&mut self) -> Option<SocketAddr> {
        let ip = self.ip()?;
        let port = u16::from_le_bytes(self.array::<2>()?);
        Some(match ip {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
            IpAddr::V6(a) => {
                let flowinfo = u32::try_from(self.varint()?).ok()?;
                let scope_id = u32::try_from(self.varint()?).ok()?;
                SocketAddr::V6(SocketAddrV6::new(a, port, flowinfo, scope_id))
            }
        })
    }
}

/// A `Duration` of `nanos` nanoseconds (`None` below zero or past `Duration::MAX`).
fn duration(nanos: i128) -> Option<Duration> {
    let nanos = u128::try_from(nanos).ok()?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Every kind of line, in both families, with repeated and changing addresses, ids that
    /// grow, shrink and jump, and times that go back: all read back exactly, in order.
    #[test]
    fn test_lines_read_back_exactly() {
        let v4 = [addr("10.0.0.1:5000"), addr("10.0.0.2:9000"), addr("127.0.0.1:1")];
        let v6 = [
            addr("[fe80::1]:5000"),
            SocketAddr::V6(SocketAddrV6::new("fe80::2".parse().unwrap(), 9000, 0xabcde, 7)),
            addr("[::1]:65535"),
        ];
        let fates = |at: Duration| {
            [
                UdpFate::Local { to: 3 },
                UdpFate::Partitioned { to: u64::MAX },
                UdpFate::Lost { to: 0 },
                UdpFate::Arrives { to: 9, at: at + Duration::from_millis(37) },
                UdpFate::Arrives { to: 9, at: Duration::ZERO }, // before the line's time
                UdpFate::FromTurmoil,
                UdpFate::FromTurmoilPartitioned,
                UdpFate::FromTurmoilUnbound,
            ]
        };
        let mut expected = Vec::new();
        let mut log = TraceLog::default();
        let mut id = 1u64;
        let times = [Duration::from_millis(5), Duration::from_millis(5), Duration::ZERO, Duration::MAX];
        for (n, addrs) in [v4, v6].into_iter().enumerate() {
            for (i, at) in times.into_iter().enumerate() {
                for (j, fate) in fates(at.min(Duration::from_secs(1 << 40))).into_iter().enumerate() {
                    let (from, dest) = (addrs[(i + j) % 3], addrs[(i + 2 * j + n) % 3]);
                    id = match j {
                        3 => id.wrapping_sub(2),
                        5 => id.wrapping_add(1 << 40),
                        6 => 0,
                        7 => u64::MAX,
                        _ => id.wrapping_add(1),
                    };
                    let line = Line::Udp { id, from, dest, len: j * 700, fate };
                    expected.push(Entry::Line(at, line));
                    expected.push(Entry::Line(at, line)); // the same addresses again
                }
                let port = addrs[i % 3].port();
                for line in [
                    Line::UdpDuplicate { id: 4, of: 3 },
                    Line::UdpDropped { id: 5, host: addrs[0].ip(), port },
                    Line::TcpConnected { id: 6, local: addrs[0], peer: addrs[1] },
                    Line::TcpAccepted { id: 7, origin: addrs[2], local: addrs[1] },
                    Line::TcpReleased { id: 8, gone: Gone::Closed },
                    Line::TcpReleased { id: 9, gone: Gone::Reset },
                    Line::TcpReleased { id: 10, gone: Gone::Silent },
                ] {
                    expected.push(Entry::Line(at, line));
                }
                expected.push(Entry::Text(i * 1000));
            }
        }
        for entry in &expected {
            match entry {
                Entry::Text(len) => log.push_text(*len),
                Entry::Line(at, line) => log.push_line(*at, line),
            }
        }
        assert_eq!(log.len(), expected.len());
        assert_eq!(log.entries().collect::<Vec<_>>(), expected);
    }

    /// Datagram lines with repeated addresses, ids a few apart and a step's time apart take the
    /// fixed layout after the first (the point of the log), and read back exactly.
    #[test]
    fn test_repeated_datagram_lines_are_small() {
        let (from, dest) = (addr("10.0.0.1:5000"), addr("10.0.0.2:9000"));
        let mut log = TraceLog::default();
        let mut expected = Vec::new();
        for n in 0..1000u64 {
            let at = Duration::from_millis(n);
            let fate = if n % 2 == 0 {
                UdpFate::Arrives { to: 3, at: at + Duration::from_micros(48_123) }
            } else {
                UdpFate::Local { to: 4 }
            };
            let line = Line::Udp { id: 2 * n + 10, from, dest, len: 1200, fate };
            log.push_line(at, &line);
            expected.push(Entry::Line(at, line));
        }
        // The first: tag, time, id, two IPv4 addresses, length, socket, arrival (varints).
        let first = 1 + 1 + 1 + 2 * 7 + 2 + 1 + 4;
        assert_eq!(log.bytes.len(), first + 999 * COMPACT_LEN);
        assert_eq!(log.entries().collect::<Vec<_>>(), expected);
    }
}
