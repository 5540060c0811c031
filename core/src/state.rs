//! readyState and the transition tables of RULES.md §9 (with the extension rows of §9.4).
//!
//! Read RULES.md §9 before editing. Every machine changes its state only through its
//! `set_ready_state`, which names a [`Row`]: a move is in the table by construction, and the
//! choke point checks it starts from the socket's current state.

use core::fmt;

/// The spec's `SocketReadyState`. Ranked: every allowed move strictly increases [`ReadyState::rank`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReadyState {
    /// Local address, port and network are being checked; for TCP no connection exists yet.
    Opening,
    /// Ready to send and receive.
    Open,
    /// TCP only: this side closed its sending direction (FIN sent or queued) and still receives.
    HalfClosed,
    /// TCP only: the closing handshake is under way.
    Closing,
    /// Terminal: cannot send or receive.
    Closed,
}

impl ReadyState {
    /// Every state, in rank order.
    pub const ALL: [ReadyState; 5] = [
        ReadyState::Opening,
        ReadyState::Open,
        ReadyState::HalfClosed,
        ReadyState::Closing,
        ReadyState::Closed,
    ];

    /// opening=0, open=1, halfclosed=2, closing=3, closed=4 (INV-05).
    pub const fn rank(self) -> u8 {
        self as u8
    }

    /// The spec's spelling: `"opening"`, `"open"`, `"halfclosed"`, `"closing"`, `"closed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReadyState::Opening => "opening",
            ReadyState::Open => "open",
            ReadyState::HalfClosed => "halfclosed",
            ReadyState::Closing => "closing",
            ReadyState::Closed => "closed",
        }
    }
}

impl fmt::Display for ReadyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the three socket interfaces a machine implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SocketKind {
    /// `TCPSocket`.
    Tcp,
    /// `TCPServerSocket`.
    TcpServer,
    /// `UDPSocket`.
    Udp,
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketKind::Tcp => "tcp",
            SocketKind::TcpServer => "tcp-server",
            SocketKind::Udp => "udp",
        })
    }
}

macro_rules! rows {
    ($( $(#[$doc:meta])* $name:ident = ($kind:ident, $from:ident, $to:ident), )*) => {
        /// One state-changing row of the transition tables (RULES.md §9.1–§9.4).
        ///
        /// Rows that leave the state unchanged are not listed: they change no state and are checked
        /// by their effects. A row that passes through a state (TCP auto-close: open → closing →
        /// closed) is two rows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        pub enum Row {
            $( $(#[$doc])* $name, )*
        }

        impl Row {
            /// Every row, in table order.
            pub const ALL: &'static [Row] = &[ $( Row::$name, )* ];

            /// The socket kind, source state and target state of this row.
            pub const fn edge(self) -> (SocketKind, ReadyState, ReadyState) {
                match self {
                    $( Row::$name => (SocketKind::$kind, ReadyState::$from, ReadyState::$to), )*
                }
            }

            /// The row's name, e.g. `"TcpOpenClose"`.
            pub const fn name(self) -> &'static str {
                match self { $( Row::$name => stringify!($name), )* }
            }
        }
    };
}

rows! {
    /// §9.1 opening → open: setup succeeds.
    UdpOpeningSetupSucceeds = (Udp, Opening, Open),
    /// §9.1 opening → closed: setup fails (bind conflict, no interface, resolution).
    UdpOpeningSetupFails = (Udp, Opening, Closed),
    /// §9.1 opening → closed: `close()` or readable cancel.
    UdpOpeningClose = (Udp, Opening, Closed),
    /// §9.1 open → closed: `close()` or readable cancel.
    UdpOpenClose = (Udp, Open, Closed),
    /// §9.1 open → closed: fatal socket error.
    UdpOpenFatalError = (Udp, Open, Closed),
    /// §9.1 open → closed: received data not convertible.
    UdpOpenConversionFails = (Udp, Open, Closed),

    /// §9.2 opening → open: connection established (and TLS done, EXT-05).
    TcpOpeningConnected = (Tcp, Opening, Open),
    /// §9.2 opening → closed: connect fails (refused, unreachable, timeout, DNS, TLS — EXT-06).
    TcpOpeningConnectFails = (Tcp, Opening, Closed),
    /// §9.2 opening → closed: `close()` or readable cancel.
    TcpOpeningClose = (Tcp, Opening, Closed),
    /// §9.2 open → halfclosed: `halfClose()`, writer close or writer abort.
    TcpOpenHalfClose = (Tcp, Open, HalfClosed),
    /// §9.2 open → closing: `close()` or readable cancel.
    TcpOpenClose = (Tcp, Open, Closing),
    /// §9.2 open → closing: the app read done after the peer's FIN (A-20 auto-close).
    TcpOpenPeerFinAutoClose = (Tcp, Open, Closing),
    /// §9.4 EXT-02 open → closing: half-open (peer FIN seen), then halfClose, writer close or close.
    TcpOpenHalfOpenClose = (Tcp, Open, Closing),
    /// §9.2 open → closed: connection lost (RST, timeout); EXT-04 peer reset.
    TcpOpenConnectionLost = (Tcp, Open, Closed),
    /// §9.2 open → closed: received data not convertible.
    TcpOpenConversionFails = (Tcp, Open, Closed),
    /// §9.4 EXT-07 open → closed: `start_tls()` handshake fails.
    TcpOpenStartTlsFails = (Tcp, Open, Closed),
    /// §9.2 halfclosed → closed: peer FIN, handshake complete.
    TcpHalfClosedPeerFin = (Tcp, HalfClosed, Closed),
    /// §9.2 halfclosed → closing: `close()` or readable cancel.
    TcpHalfClosedClose = (Tcp, HalfClosed, Closing),
    /// §9.2 halfclosed → closed: connection lost; EXT-04 peer reset.
    TcpHalfClosedConnectionLost = (Tcp, HalfClosed, Closed),
    /// §9.2 closing → closed: closing handshake completes.
    TcpClosingHandshakeCompletes = (Tcp, Closing, Closed),
    /// §9.2 closing → closed: closing handshake fails (RST, close timeout); EXT-04.
    TcpClosingHandshakeFails = (Tcp, Closing, Closed),
    /// §9.4 EXT-03 opening → closed: `reset()`.
    TcpOpeningReset = (Tcp, Opening, Closed),
    /// §9.4 EXT-03 open → closed: `reset()`.
    TcpOpenReset = (Tcp, Open, Closed),
    /// §9.4 EXT-03 halfclosed → closed: `reset()`.
    TcpHalfClosedReset = (Tcp, HalfClosed, Closed),
    /// §9.4 EXT-03 closing → closed: `reset()`.
    TcpClosingReset = (Tcp, Closing, Closed),

    /// §9.3 opening → open: listening socket ready.
    ServerOpeningListening = (TcpServer, Opening, Open),
    /// §9.3 opening → closed: creation fails.
    ServerOpeningCreationFails = (TcpServer, Opening, Closed),
    /// §9.3 opening → closed: `close()`.
    ServerOpeningClose = (TcpServer, Opening, Closed),
    /// §9.3 open → closed: `close()`.
    ServerOpenClose = (TcpServer, Open, Closed),
    /// §9.3 open → closed: server error (network loss).
    ServerOpenError = (TcpServer, Open, Closed),
}

impl Row {
    /// Whether some row of `kind`'s table moves `from` → `to`.
    pub fn allows(kind: SocketKind, from: ReadyState, to: ReadyState) -> bool {
        Row::ALL.iter().any(|r| r.edge() == (kind, from, to))
    }
}

/// Mutation testing (feature `mutations`): one §9 row can be disabled for every machine created
/// afterwards, so the conformance suite can show that some scenario notices (`mutants`). Off unless
/// set; machines built before the call keep the setting they were built with.
#[cfg(feature = "mutations")]
pub mod mutation {
    use super::Row;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DISABLED: AtomicUsize = AtomicUsize::new(usize::MAX);

    /// Disables `row` (or nothing) for machines created from now on.
    pub fn disable(row: Option<Row>) {
        let index = row.and_then(|r| Row::ALL.iter().position(|x| *x == r)).unwrap_or(usize::MAX);
        DISABLED.store(index, Ordering::SeqCst);
    }

    /// The row disabled for new machines, if any.
    pub fn disabled() -> Option<Row> {
        Row::ALL.get(DISABLED.load(Ordering::SeqCst)).copied()
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReadyState::*;

    // rule: STATE-01, STATE-03, STATE-04, STATE-05, STATE-06
    #[test]
    fn every_row_strictly_increases_the_rank_and_closed_is_terminal() {
        for row in Row::ALL {
            let (kind, from, to) = row.edge();
            assert!(to.rank() > from.rank(), "{row} does not increase the rank");
            assert_ne!(from, Closed, "{row} leaves closed");
            assert_ne!(to, Opening, "{row} enters opening");
            if kind != SocketKind::Tcp {
                for s in [from, to] {
                    assert!(s != HalfClosed && s != Closing, "{row}: {kind} never uses {s}");
                }
            }
        }
    }

    // rule: STATE-05
    #[test]
    fn forbidden_tcp_moves_are_absent() {
        let tcp = SocketKind::Tcp;
        assert!(!Row::allows(tcp, Opening, HalfClosed));
        assert!(!Row::allows(tcp, Opening, Closing));
        assert!(!Row::allows(tcp, HalfClosed, Open));
        assert!(!Row::allows(tcp, Closing, HalfClosed));
        assert!(Row::allows(tcp, Open, HalfClosed));
    }

    #[test]
    fn display_uses_the_spec_spelling() {
        let text: Vec<String> = ReadyState::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(text, ["opening", "open", "halfclosed", "closing", "closed"]);
    }
}
