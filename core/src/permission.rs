//! Permissions: read RULES.md §2 (PERM-*), §6 DICT-PERM-01..09, §7 ENUM-PERM-*, §10 AMB-01..04 and
//! GEN-13 before editing.
//!
//! The pure half of the permission model. Three independent kinds (ENTRY-01) each keep their stored
//! decisions in a [`PermissionStore`]; [`PermissionStore::state`] answers `hasPermission` and the
//! constructor checks, [`PermissionStore::request_step`] says what `requestPermission` does next
//! (reject, allow, or ask the user) and [`PermissionStore::answer`] stores the user's answer. The
//! async crate's `Policy` (`allow_all`, `deny_all`, `allow_list`, `prompt`) wraps a store and does
//! the asking.
//!
//! # Matching (DICT-PERM-09)
//!
//! A stored grant `G` covers a request `R` when (a) each remote field present in `R` equals `G`'s
//! field or `G` omits it, (b) each local field present in `R` is present in `G` with the same
//! value, and (c) fields absent from `R` impose nothing. A stored denial `D` matches `R` only when
//! every field present in `D` is present in `R` with the same value. The state of `R` is
//! `denied` if any denial matches, else `granted` if any grant (or trust entry, or allow-list
//! [`Rule`]) covers it, else `prompt`; the order of decisions never matters.
//!
//! Addresses compare by value when both sides are IP literals (GEN-13; IPv4-mapped IPv6 is the
//! IPv4 address, so no spelling slips past a denial), otherwise ASCII-case-insensitively; a literal
//! never equals a host name and nothing is resolved. A local port of 0 means "ephemeral" (AMB-06)
//! and is treated as an absent local port.
//!
//! # Allow-list rules (DESIGN §5)
//!
//! `tcp:HOST:PORTS`, `udp-remote:HOST:PORTS`, `udp-local:ADDR:PORTS`, `tcp-server:ADDR:PORTS`.
//! `HOST` is `*`, a host name, an IPv4 literal or a bracketed IPv6 literal (`[::1]`); `ADDR` is
//! `*` or an IP literal (IPv6 bracketed); `PORTS` is `*`, a port (`80`) or an inclusive range
//! (`8000-8100`). A rule acts as a grant whose `*` parts are "any". Decision for UDP, whose
//! requests can name both a destination and a local binding: a UDP request is covered when its
//! remote part (if it has one) is covered by some `udp-remote` rule **and** its local part (if it
//! has one) by some `udp-local` rule; a UDP request with no field at all is covered as soon as
//! any `udp-*` rule exists. So `udp-local` rules never let a socket send anywhere, and
//! `udp-remote` rules never let it bind a chosen address or port.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use crate::address::{parse_ip_literal, HostName};
use crate::error::{Cause, ErrorName, SocketError};
use crate::options::{TcpServerOptions, UdpOptions};

/// Which of the three independent permission objects a request or decision belongs to (ENTRY-01).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum PermissionKind {
    /// `navigator.udpPermission`: creating UDP sockets and sending datagrams.
    Udp,
    /// `navigator.tcpPermission`: connecting TCP sockets.
    Tcp,
    /// `navigator.tcpServerPermission`: creating TCP server sockets.
    TcpServer,
}

impl PermissionKind {
    /// Every kind, in declaration order.
    pub const ALL: [PermissionKind; 3] =
        [PermissionKind::Udp, PermissionKind::Tcp, PermissionKind::TcpServer];

    /// `"udp"`, `"tcp"` or `"tcp-server"` (the rule-grammar spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            PermissionKind::Udp => "udp",
            PermissionKind::Tcp => "tcp",
            PermissionKind::TcpServer => "tcp-server",
        }
    }
}

impl fmt::Display for PermissionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's `TCPUDPPermissionState` (ENUM-PERM-01..03).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum PermissionState {
    /// `"granted"`: the webapp has permission for the requested use.
    Granted,
    /// `"denied"`: permission has been denied.
    Denied,
    /// `"prompt"`: the webapp must call `requestPermission` first. Constructors treat it as
    /// denied (`SecurityError`).
    Prompt,
}

impl PermissionState {
    /// The spec spelling: `"granted"`, `"denied"` or `"prompt"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PermissionState::Granted => "granted",
            PermissionState::Denied => "denied",
            PermissionState::Prompt => "prompt",
        }
    }

    /// Whether a constructor or a UDP write may go ahead (only `granted`).
    pub const fn is_granted(self) -> bool {
        matches!(self, PermissionState::Granted)
    }
}

impl fmt::Display for PermissionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's `UDPPermissionOptions`, fields as the caller gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct UdpPermissionOptions {
    /// Peer to send to; omitted: any peer (DICT-PERM-01).
    pub remote_address: Option<String>,
    /// Port to send to; omitted: any port (DICT-PERM-02).
    pub remote_port: Option<u16>,
    /// Local address to bind; omitted: the library chooses, no specific address (DICT-PERM-03).
    pub local_address: Option<String>,
    /// Local port to bind; omitted (or 0): ephemeral, no specific port (DICT-PERM-04).
    pub local_port: Option<u16>,
}

/// The spec's `TCPPermissionOptions`, fields as the caller gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct TcpPermissionOptions {
    /// Peer to connect to; omitted: any peer (DICT-PERM-05).
    pub remote_address: Option<String>,
    /// Port to connect to; omitted: any port (DICT-PERM-06).
    pub remote_port: Option<u16>,
}

/// The spec's `TCPServerPermissionOptions`, fields as the caller gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct TcpServerPermissionOptions {
    /// Local address to bind; omitted: no specific address (DICT-PERM-07).
    pub local_address: Option<String>,
    /// Local port to bind; omitted (or 0): no specific port (DICT-PERM-08).
    pub local_port: Option<u16>,
}

/// One permission question of any kind: the options of a `hasPermission`/`requestPermission`
/// call, of a constructor, or the destination of a UDP write. Also the scope of a stored
/// [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PermissionRequest {
    /// Which permission object is asked.
    pub kind: PermissionKind,
    /// Remote address text (host name or IP literal), as given.
    pub remote_address: Option<String>,
    /// Remote port.
    pub remote_port: Option<u16>,
    /// Local address text, as given.
    pub local_address: Option<String>,
    /// Local port; 0 counts as absent.
    pub local_port: Option<u16>,
}

impl PermissionRequest {
    /// A request of `kind` with every field omitted (PERM-GEN-03: an omitted options argument).
    pub const fn new(kind: PermissionKind) -> Self {
        PermissionRequest {
            kind,
            remote_address: None,
            remote_port: None,
            local_address: None,
            local_port: None,
        }
    }

    /// What a `UDPSocket` constructor with `opts` asks for: all four fields as given (raw text, so
    /// a denial wins over an invalid address, PERM-GEN-01).
    pub fn udp_socket(opts: &UdpOptions) -> Self {
        PermissionRequest {
            kind: PermissionKind::Udp,
            remote_address: opts.remote_address.clone(),
            remote_port: opts.remote_port,
            local_address: opts.local_address.clone(),
            local_port: opts.local_port,
        }
    }

    /// What a UDP write to `address:port` asks for (its effective destination, UDP-WRITE-04).
    pub fn udp_write(address: &str, port: u16) -> Self {
        PermissionRequest {
            remote_address: Some(address.to_owned()),
            remote_port: Some(port),
            ..PermissionRequest::new(PermissionKind::Udp)
        }
    }

    /// What a `TCPSocket` constructor asks for: the remote address and port as given. The local
    /// options are not part of `TCPPermissionOptions` and need no permission.
    pub fn tcp_socket(remote_address: &str, remote_port: u16) -> Self {
        PermissionRequest {
            remote_address: Some(remote_address.to_owned()),
            remote_port: Some(remote_port),
            ..PermissionRequest::new(PermissionKind::Tcp)
        }
    }

    /// What a `TCPServerSocket` constructor with `opts` asks for: the local address and port.
    pub fn tcp_server(opts: &TcpServerOptions) -> Self {
        PermissionRequest {
            local_address: opts.local_address.clone(),
            local_port: opts.local_port,
            ..PermissionRequest::new(PermissionKind::TcpServer)
        }
    }

    /// The same request without its local fields.
    pub fn remote_part(&self) -> Self {
        PermissionRequest { local_address: None, local_port: None, ..self.clone() }
    }

    /// The same request without its remote fields.
    pub fn local_part(&self) -> Self {
        PermissionRequest { remote_address: None, remote_port: None, ..self.clone() }
    }

    /// Whether a remote field is present.
    pub fn has_remote(&self) -> bool {
        self.remote_address.is_some() || self.remote_port.is_some()
    }

    /// Whether a local field is present (a local port of 0 does not count).
    pub fn has_local(&self) -> bool {
        self.local_address.is_some() || self.specific_local_port().is_some()
    }

    /// The local port if it names a specific port (0 means ephemeral, AMB-06).
    fn specific_local_port(&self) -> Option<u16> {
        self.local_port.filter(|&p| p != 0)
    }
}

impl From<UdpPermissionOptions> for PermissionRequest {
    fn from(o: UdpPermissionOptions) -> Self {
        PermissionRequest {
            kind: PermissionKind::Udp,
            remote_address: o.remote_address,
            remote_port: o.remote_port,
            local_address: o.local_address,
            local_port: o.local_port,
        }
    }
}

impl From<TcpPermissionOptions> for PermissionRequest {
    fn from(o: TcpPermissionOptions) -> Self {
        PermissionRequest {
            remote_address: o.remote_address,
            remote_port: o.remote_port,
            ..PermissionRequest::new(PermissionKind::Tcp)
        }
    }
}

impl From<TcpServerPermissionOptions> for PermissionRequest {
    fn from(o: TcpServerPermissionOptions) -> Self {
        PermissionRequest {
            local_address: o.local_address,
            local_port: o.local_port,
            ..PermissionRequest::new(PermissionKind::TcpServer)
        }
    }
}

/// Whether two address texts name the same address: by value for two IP literals (IPv4-mapped IPv6
/// counts as IPv4), ASCII-case-insensitively otherwise; a literal never equals a name (GEN-13).
pub fn same_address(a: &str, b: &str) -> bool {
    match (parse_ip_literal(a), parse_ip_literal(b)) {
        (Some(x), Some(y)) => x.to_canonical() == y.to_canonical(),
        (None, None) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// DICT-PERM-09 (a)–(c): whether a grant made for `grant` covers `request` (same kind required).
pub fn grant_covers(grant: &PermissionRequest, request: &PermissionRequest) -> bool {
    let remote_address = match (&request.remote_address, &grant.remote_address) {
        (Some(r), Some(g)) => same_address(g, r),
        _ => true,
    };
    let remote_port = match (request.remote_port, grant.remote_port) {
        (Some(r), Some(g)) => r == g,
        _ => true,
    };
    let local_address = match (&request.local_address, &grant.local_address) {
        (Some(r), Some(g)) => same_address(g, r),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let local_port = match (request.specific_local_port(), grant.specific_local_port()) {
        (Some(r), g) => g == Some(r),
        (None, _) => true,
    };
    grant.kind == request.kind && remote_address && remote_port && local_address && local_port
}

/// DICT-PERM-09: whether a denial made for `denial` matches `request`: every field present in the
/// denial is present in the request with the same value (same kind required).
pub fn denial_matches(denial: &PermissionRequest, request: &PermissionRequest) -> bool {
    let address = |d: &Option<String>, r: &Option<String>| match (d, r) {
        (Some(d), Some(r)) => same_address(d, r),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let port = |d: Option<u16>, r: Option<u16>| d.is_none() || d == r;
    denial.kind == request.kind
        && address(&denial.remote_address, &request.remote_address)
        && port(denial.remote_port, request.remote_port)
        && address(&denial.local_address, &request.local_address)
        && port(denial.specific_local_port(), request.specific_local_port())
}

/// How a stored [`Decision`] came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Verdict {
    /// Granted explicitly (a `requestPermission` the user allowed, or set by the test policy).
    Granted,
    /// Denied explicitly (a `requestPermission` the user refused, or set by the test policy).
    Denied,
    /// A pre-arranged trust relationship: a grant that never needed a prompt (PERM-UDP-REQ-03).
    /// Matches exactly like [`Verdict::Granted`].
    Trusted,
}

/// One stored decision: a verdict for exactly the options it was made for (PERM-GEN-05).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Decision {
    /// The options the decision was made for.
    pub scope: PermissionRequest,
    /// Grant, denial or trust.
    pub verdict: Verdict,
}

impl Decision {
    /// Whether this decision applies to `request`: a denial when it matches, a grant or trust
    /// entry when it covers (DICT-PERM-09).
    pub fn applies_to(&self, request: &PermissionRequest) -> bool {
        match self.verdict {
            Verdict::Denied => denial_matches(&self.scope, request),
            Verdict::Granted | Verdict::Trusted => grant_covers(&self.scope, request),
        }
    }
}

/// What `requestPermission` does next, decided from the store alone (PERM-*-REQ-*).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum RequestStep {
    /// Reject with this `SecurityError` without prompting (PERM-UDP-REQ-01/02, PERM-TCP-REQ-01,
    /// PERM-SRV-REQ-01).
    Reject(SocketError),
    /// Resolve without prompting: trusted, granted earlier, or covered by an allow-list rule
    /// (PERM-UDP-REQ-03, PERM-TCP-REQ-02, PERM-SRV-REQ-02). Nothing new is stored: the request is
    /// already granted, and storing it as a grant of its own could widen an earlier grant (a grant
    /// for one destination covers `{}`, but a grant for `{}` covers every destination).
    Allow,
    /// Ask the user, then call [`PermissionStore::answer`] with the reply (PERM-UDP-REQ-04/05).
    AskUser,
}

/// The stored permission decisions of one library context: three independent per-kind lists
/// (ENTRY-01) and the allow-list rules. Deterministic: plain vectors, first-in order, and the
/// order never changes an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct PermissionStore {
    udp: Vec<Decision>,
    tcp: Vec<Decision>,
    tcp_server: Vec<Decision>,
    rules: Vec<Rule>,
}

impl PermissionStore {
    /// An empty store: every request is `prompt`.
    pub fn new() -> Self {
        PermissionStore::default()
    }

    /// A store that allows everything: the rules `tcp:*:*`, `udp-remote:*:*`, `udp-local:*:*` and
    /// `tcp-server:*:*` (denials recorded later still win).
    pub fn allow_all() -> Self {
        let any = |scope| Rule { scope, host: HostPattern::Any, ports: PortRange::ANY };
        PermissionStore::allow_list([
            any(RuleScope::Tcp),
            any(RuleScope::UdpRemote),
            any(RuleScope::UdpLocal),
            any(RuleScope::TcpServer),
        ])
    }

    /// A store that denies everything: a denial for `{}` of each kind, which matches every
    /// request, so `hasPermission` reports `denied` and `requestPermission` rejects unprompted.
    pub fn deny_all() -> Self {
        let mut store = PermissionStore::new();
        for kind in PermissionKind::ALL {
            store.deny(PermissionRequest::new(kind));
        }
        store
    }

    /// A store with these allow-list rules and nothing else.
    pub fn allow_list(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut store = PermissionStore::new();
        for rule in rules {
            store.allow(rule);
        }
        store
    }

    /// The state of `request` (`hasPermission`, constructor checks, UDP writes). Only reads:
    /// never prompts and never changes the store (PERM-GEN-04).
    pub fn state(&self, request: &PermissionRequest) -> PermissionState {
        let list = self.decisions(request.kind);
        let denied = |d: &Decision| d.verdict == Verdict::Denied && d.applies_to(request);
        let granted = |d: &Decision| d.verdict != Verdict::Denied && d.applies_to(request);
        if list.iter().any(denied) {
            PermissionState::Denied
        } else if list.iter().any(granted) || rules_cover(&self.rules, request) {
            PermissionState::Granted
        } else {
            PermissionState::Prompt
        }
    }

    /// `Granted` when every TCP request naming only a remote address and port (what a
    /// `TCPSocket` constructor asks, PERM-GEN-01) is granted whatever the address and port: no
    /// TCP decision is stored and a `tcp:*:*` rule covers them all. `None` when the answer
    /// depends on the request; ask [`state`](Self::state) then. A constructor then neither
    /// builds the request nor matches it (issue #6: one allocation per connection).
    pub fn tcp_remote_state_for_all(&self) -> Option<PermissionState> {
        let covers_all =
            |r: &Rule| r.scope == RuleScope::Tcp && r.host == HostPattern::Any && r.ports == PortRange::ANY;
        (self.tcp.is_empty() && self.rules.iter().any(covers_all)).then_some(PermissionState::Granted)
    }

    /// What `requestPermission(request)` does next. A stored denial rejects without a prompt, the
    /// remote scope checked before the local one (PERM-UDP-REQ-01/02): first whether the request's
    /// remote part alone is denied, then the whole request. A granted request resolves without a
    /// prompt; anything else asks the user.
    pub fn request_step(&self, request: &PermissionRequest) -> RequestStep {
        let denied = |r: &PermissionRequest| {
            self.decisions(r.kind).iter().any(|d| d.verdict == Verdict::Denied && d.applies_to(r))
        };
        if request.kind != PermissionKind::TcpServer && denied(&request.remote_part()) {
            let what = match request.kind {
                PermissionKind::Tcp => "connecting to the requested remote address and port",
                _ => "sending to the requested remote address and port",
            };
            return RequestStep::Reject(
                SocketError::security().with_message(format!("permission denied for {what}")),
            );
        }
        if denied(request) {
            return RequestStep::Reject(
                SocketError::security()
                    .with_message("permission denied for binding the requested local address and port"),
            );
        }
        match self.state(request) {
            PermissionState::Granted => RequestStep::Allow,
            // Unreachable after the denial checks above; kept total rather than asserting.
            PermissionState::Denied => RequestStep::Reject(SocketError::security()),
            PermissionState::Prompt => RequestStep::AskUser,
        }
    }

    /// Stores the user's answer to the prompt for `request` and returns what `requestPermission`
    /// settles with: `Ok(())` if granted, `SecurityError` if not (PERM-UDP-REQ-04/05, PERM-GEN-05).
    pub fn answer(&mut self, request: PermissionRequest, granted: bool) -> Result<(), SocketError> {
        self.record(request, granted);
        if granted {
            Ok(())
        } else {
            Err(SocketError::security().with_message("the user did not grant permission"))
        }
    }

    /// Stores a grant or a denial for exactly `request` (PERM-GEN-05). An identical decision
    /// already stored is not stored twice.
    pub fn record(&mut self, request: PermissionRequest, granted: bool) {
        let verdict = if granted { Verdict::Granted } else { Verdict::Denied };
        self.push(Decision { scope: request, verdict });
    }

    /// Stores a grant for exactly `request`.
    pub fn grant(&mut self, request: PermissionRequest) {
        self.record(request, true);
    }

    /// Stores a denial for exactly `request`.
    pub fn deny(&mut self, request: PermissionRequest) {
        self.record(request, false);
    }

    /// Stores a pre-arranged trust entry for `request`: allowed without a prompt, matched like a
    /// grant (PERM-UDP-REQ-03, PERM-TCP-REQ-02, PERM-SRV-REQ-02).
    pub fn trust(&mut self, request: PermissionRequest) {
        self.push(Decision { scope: request, verdict: Verdict::Trusted });
    }

    /// Adds an allow-list rule (a pre-arranged grant with wildcards).
    pub fn allow(&mut self, rule: Rule) {
        if !self.rules.contains(&rule) {
            self.rules.push(rule);
        }
    }

    /// The decisions stored for `kind`, oldest first.
    pub fn decisions(&self, kind: PermissionKind) -> &[Decision] {
        match kind {
            PermissionKind::Udp => &self.udp,
            PermissionKind::Tcp => &self.tcp,
            PermissionKind::TcpServer => &self.tcp_server,
        }
    }

    /// The allow-list rules, in the order they were added.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn push(&mut self, decision: Decision) {
        let list = match decision.scope.kind {
            PermissionKind::Udp => &mut self.udp,
            PermissionKind::Tcp => &mut self.tcp,
            PermissionKind::TcpServer => &mut self.tcp_server,
        };
        if !list.contains(&decision) {
            list.push(decision);
        }
    }
}

impl SocketError {
    /// `UnknownError` (cause: permission query failed): what `hasPermission` rejects with when the
    /// policy cannot be read (AMB-02, PERM-*-HAS-02, ERR-10). Produced by the async layer.
    pub fn permission_query_failed() -> Self {
        SocketError::with_cause(ErrorName::UnknownError, Cause::PermissionQueryFailed)
    }
}

/// What part of which permission an allow-list [`Rule`] grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RuleScope {
    /// `tcp:`: connecting TCP sockets to a remote.
    Tcp,
    /// `udp-remote:`: sending UDP datagrams to a remote (the remote part of a UDP request).
    UdpRemote,
    /// `udp-local:`: binding a UDP socket to a local address/port (the local part).
    UdpLocal,
    /// `tcp-server:`: binding a TCP server to a local address/port.
    TcpServer,
}

impl RuleScope {
    /// The rule-grammar keyword (`"tcp"`, `"udp-remote"`, `"udp-local"`, `"tcp-server"`).
    pub const fn keyword(self) -> &'static str {
        match self {
            RuleScope::Tcp => "tcp",
            RuleScope::UdpRemote => "udp-remote",
            RuleScope::UdpLocal => "udp-local",
            RuleScope::TcpServer => "tcp-server",
        }
    }

    /// The permission kind this scope grants.
    pub const fn kind(self) -> PermissionKind {
        match self {
            RuleScope::Tcp => PermissionKind::Tcp,
            RuleScope::UdpRemote | RuleScope::UdpLocal => PermissionKind::Udp,
            RuleScope::TcpServer => PermissionKind::TcpServer,
        }
    }

    /// Whether the rule's address and ports are the remote fields (else the local ones).
    pub const fn is_remote(self) -> bool {
        matches!(self, RuleScope::Tcp | RuleScope::UdpRemote)
    }

    fn from_keyword(text: &str) -> Option<RuleScope> {
        [RuleScope::Tcp, RuleScope::UdpRemote, RuleScope::UdpLocal, RuleScope::TcpServer]
            .into_iter()
            .find(|s| s.keyword() == text)
    }
}

/// The address part of a [`Rule`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HostPattern {
    /// `*`: any address.
    Any,
    /// An IP literal, matched by value.
    Ip(IpAddr),
    /// A host name, matched case-insensitively and never resolved (remote scopes only).
    Name(HostName),
}

impl HostPattern {
    /// Whether the address text `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Ip(ip) => {
                parse_ip_literal(text).is_some_and(|t| t.to_canonical() == ip.to_canonical())
            }
            HostPattern::Name(name) => {
                parse_ip_literal(text).is_none() && text.eq_ignore_ascii_case(name.as_str())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            HostPattern::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            HostPattern::Name(name) => write!(f, "{name}"),
        }
    }
}

/// The port part of a [`Rule`]: an inclusive range (`*` is `0-65535`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Every port (`*`).
    pub const ANY: PortRange = PortRange { first: 0, last: u16::MAX };

    /// The range `first..=last`; `None` when `first > last`.
    pub const fn new(first: u16, last: u16) -> Option<PortRange> {
        if first <= last {
            Some(PortRange { first, last })
        } else {
            None
        }
    }

    /// Exactly one port.
    pub const fn single(port: u16) -> PortRange {
        PortRange { first: port, last: port }
    }

    /// The first port of the range.
    pub const fn first(self) -> u16 {
        self.first
    }

    /// The last port of the range (inclusive).
    pub const fn last(self) -> u16 {
        self.last
    }

    /// Whether `port` is in the range.
    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ANY {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One allow-list rule (DESIGN §5): `SCOPE:HOST:PORTS`, see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
pub struct Rule {
    /// What the rule grants.
    pub scope: RuleScope,
    /// Which addresses (a host name only in remote scopes).
    pub host: HostPattern,
    /// Which ports.
    pub ports: PortRange,
}

impl Rule {
    /// Parses `tcp:HOST:PORTS`, `udp-remote:HOST:PORTS`, `udp-local:ADDR:PORTS` or
    /// `tcp-server:ADDR:PORTS` (surrounding whitespace ignored). Anything else is a `TypeError`
    /// whose message says what is wrong.
    pub fn parse(text: &str) -> Result<Rule, SocketError> {
        let text = text.trim();
        let bad = |why: &str| {
            SocketError::type_error().with_message(format!("invalid permission rule {text:?}: {why}"))
        };
        let (keyword, rest) = text.split_once(':').ok_or_else(|| bad("expected SCOPE:ADDRESS:PORTS"))?;
        let scope = RuleScope::from_keyword(keyword)
            .ok_or_else(|| bad("the scope must be tcp, udp-remote, udp-local or tcp-server"))?;
        let (host, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let (v6, after) = inner.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let ports = after.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?;
            match parse_ip_literal(v6) {
                Some(ip @ IpAddr::V6(_)) => (HostPattern::Ip(ip), ports),
                _ => return Err(bad("brackets must hold an IPv6 literal")),
            }
        } else {
            let (host, ports) = rest.split_once(':').ok_or_else(|| bad("expected SCOPE:ADDRESS:PORTS"))?;
            let host = if host == "*" {
                HostPattern::Any
            } else if let Some(ip) = parse_ip_literal(host) {
                HostPattern::Ip(ip)
            } else if host.contains(':') || ports.contains(':') {
                return Err(bad("IPv6 literals must be bracketed, as in [::1]"));
            } else if !scope.is_remote() {
                return Err(bad("a local address must be * or an IP literal"));
            } else {
                HostPattern::Name(
                    HostName::parse(host).map_err(|_| bad("not a valid host name or IP literal"))?,
                )
            };
            (host, ports)
        };
        let port = |p: &str| -> Result<u16, SocketError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a port must be decimal digits"));
            }
            p.parse::<u16>().map_err(|_| bad("a port must be at most 65535"))
        };
        let ports = if ports == "*" {
            PortRange::ANY
        } else if let Some((first, last)) = ports.split_once('-') {
            PortRange::new(port(first)?, port(last)?)
                .ok_or_else(|| bad("a port range must not be reversed"))?
        } else {
            PortRange::single(port(ports)?)
        };
        Ok(Rule { scope, host, ports })
    }

    /// Whether this one rule covers `request` on its own: the kind matches, the request names
    /// nothing outside the rule's side (remote for `tcp`/`udp-remote`, local for
    /// `udp-local`/`tcp-server`), and every field it names on that side matches. Absent fields
    /// impose nothing (DICT-PERM-09 c). A UDP request naming both sides needs two rules: see
    /// [`rules_cover`].
    pub fn covers(&self, request: &PermissionRequest) -> bool {
        if request.kind != self.scope.kind() {
            return false;
        }
        let (other_side, address, port) = if self.scope.is_remote() {
            (request.has_local(), &request.remote_address, request.remote_port)
        } else {
            (request.has_remote(), &request.local_address, request.specific_local_port())
        };
        let address_ok = match address {
            Some(a) => self.host.matches(a),
            None => true,
        };
        let port_ok = match port {
            Some(p) => self.ports.contains(p),
            None => true,
        };
        !other_side && address_ok && port_ok
    }
}

impl FromStr for Rule {
    type Err = SocketError;
    fn from_str(text: &str) -> Result<Rule, SocketError> {
        Rule::parse(text)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.scope.keyword(), self.host, self.ports)
    }
}

impl TryFrom<String> for Rule {
    type Error = SocketError;
    fn try_from(text: String) -> Result<Rule, SocketError> {
        Rule::parse(&text)
    }
}

impl From<Rule> for String {
    fn from(rule: Rule) -> String {
        rule.to_string()
    }
}

/// Whether the allow-list `rules` cover `request`. TCP and server requests need one covering
/// rule. A UDP request needs its remote part (if any) covered by a `udp-remote` rule and its local
/// part (if any) by a `udp-local` rule; with neither part, any `udp-*` rule covers it.
pub fn rules_cover(rules: &[Rule], request: &PermissionRequest) -> bool {
    if request.kind != PermissionKind::Udp {
        return rules.iter().any(|r| r.covers(request));
    }
    let part_covered = |part: PermissionRequest| rules.iter().any(|r| r.covers(&part));
    rules.iter().any(|r| r.scope.kind() == PermissionKind::Udp)
        && (!request.has_remote() || part_covered(request.remote_part()))
        && (!request.has_local() || part_covered(request.local_part()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // rule: PERM-GEN-01
    #[test]
    fn every_tcp_request_is_granted_at_once_only_when_nothing_depends_on_it() {
        let any = PermissionRequest::tcp_socket("198.51.100.7", 9);
        let all = PermissionStore::allow_all();
        assert_eq!(all.tcp_remote_state_for_all(), Some(PermissionState::Granted));
        assert_eq!(all.state(&any), PermissionState::Granted);
        // A stored decision (a denial of one remote, say) makes the answer depend on the request.
        let mut denied = PermissionStore::allow_all();
        denied.deny(PermissionRequest::tcp_socket("198.51.100.7", 9));
        assert_eq!(denied.tcp_remote_state_for_all(), None);
        assert_eq!(denied.state(&any), PermissionState::Denied);
        // So does a rule that covers some remotes only, and no rule at all.
        let some = PermissionStore::allow_list([Rule::parse("tcp:127.0.0.1:*").unwrap()]);
        assert_eq!(some.tcp_remote_state_for_all(), None);
        assert_eq!(PermissionStore::new().tcp_remote_state_for_all(), None);
        assert_eq!(PermissionStore::deny_all().tcp_remote_state_for_all(), None);
    }

    fn udp(remote: Option<(&str, u16)>, local: Option<(&str, u16)>) -> PermissionRequest {
        PermissionRequest {
            kind: PermissionKind::Udp,
            remote_address: remote.map(|r| r.0.to_owned()),
            remote_port: remote.map(|r| r.1),
            local_address: local.map(|l| l.0.to_owned()),
            local_port: local.map(|l| l.1),
        }
    }

    fn udp_opts(
        remote: Option<&str>,
        rport: Option<u16>,
        local: Option<&str>,
        lport: Option<u16>,
    ) -> PermissionRequest {
        UdpPermissionOptions {
            remote_address: remote.map(str::to_owned),
            remote_port: rport,
            local_address: local.map(str::to_owned),
            local_port: lport,
        }
        .into()
    }

    fn tcp(remote: Option<&str>, port: Option<u16>) -> PermissionRequest {
        TcpPermissionOptions { remote_address: remote.map(str::to_owned), remote_port: port }.into()
    }

    fn server(local: Option<&str>, port: Option<u16>) -> PermissionRequest {
        TcpServerPermissionOptions { local_address: local.map(str::to_owned), local_port: port }.into()
    }

    fn rule(text: &str) -> Rule {
        Rule::parse(text).unwrap()
    }

    fn assert_security(step: RequestStep) -> SocketError {
        match step {
            RequestStep::Reject(e) => {
                assert_eq!(e.kind(), ErrorName::SecurityError);
                e
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    // rule: ENUM-PERM-01, ENUM-PERM-02, ENUM-PERM-03
    #[test]
    fn test_state_spellings_and_meaning() {
        assert_eq!(PermissionState::Granted.to_string(), "granted");
        assert_eq!(PermissionState::Denied.to_string(), "denied");
        assert_eq!(PermissionState::Prompt.to_string(), "prompt");
        let mut store = PermissionStore::new();
        let o = udp(Some(("127.0.0.1", 9)), None);
        assert_eq!(store.state(&o), PermissionState::Prompt);
        assert_eq!(store.request_step(&o), RequestStep::AskUser);
        store.answer(o.clone(), true).unwrap();
        assert_eq!(store.state(&o), PermissionState::Granted);
        assert!(store.state(&o).is_granted());
        store.deny(o.clone());
        assert_eq!(store.state(&o), PermissionState::Denied);
        assert!(!PermissionState::Prompt.is_granted() && !PermissionState::Denied.is_granted());
    }

    // rule: PERM-GEN-03, DICT-GEN-01
    #[test]
    fn test_omitted_options_equal_empty_options() {
        for kind in PermissionKind::ALL {
            let empty = match kind {
                PermissionKind::Udp => PermissionRequest::from(UdpPermissionOptions::default()),
                PermissionKind::Tcp => PermissionRequest::from(TcpPermissionOptions::default()),
                PermissionKind::TcpServer => PermissionRequest::from(TcpServerPermissionOptions::default()),
            };
            assert_eq!(empty, PermissionRequest::new(kind));
            for store in [PermissionStore::new(), PermissionStore::allow_all(), PermissionStore::deny_all()] {
                assert_eq!(store.state(&empty), store.state(&PermissionRequest::new(kind)));
            }
        }
    }

    // rule: PERM-GEN-04
    #[test]
    fn test_state_only_reads() {
        let mut store = PermissionStore::new();
        store.grant(udp(Some(("127.0.0.1", 9)), None));
        store.deny(udp(Some(("127.0.0.2", 9)), None));
        let before = store.clone();
        let r = udp(Some(("127.0.0.3", 9)), None);
        let first = store.state(&r);
        for _ in 0..3 {
            assert_eq!(store.state(&r), first);
            let _ = store.request_step(&r);
        }
        assert_eq!(first, PermissionState::Prompt);
        assert_eq!(store, before);
    }

    // rule: PERM-GEN-05, DICT-PERM-09
    #[test]
    fn test_request_outcome_is_stored_for_exactly_o() {
        let mut store = PermissionStore::new();
        let all = PermissionRequest::new(PermissionKind::Udp);
        assert_eq!(store.request_step(&all), RequestStep::AskUser);
        store.answer(all.clone(), true).unwrap();
        assert_eq!(store.state(&all), PermissionState::Granted);
        // A constructor covered by the grant {} (no local fields) is granted.
        assert!(store.state(&udp(Some(("127.0.0.1", 9)), None)).is_granted());
        // A refused request for O: has(O) denied, udp(O) denied, udp({}) still granted.
        let o = udp_opts(Some("127.0.0.2"), Some(9), None, None);
        store.answer(o.clone(), false).unwrap_err();
        assert_eq!(store.state(&o), PermissionState::Denied);
        assert_eq!(store.state(&all), PermissionState::Granted);
        assert_eq!(store.decisions(PermissionKind::Udp).len(), 2);
    }

    // rule: PERM-UDP-HAS-01, PERM-TCP-HAS-01, PERM-SRV-HAS-01
    #[test]
    fn test_has_permission_reports_each_state_per_kind() {
        for o in [
            udp(Some(("127.0.0.1", 9)), Some(("127.0.0.1", 5000))),
            tcp(Some("localhost"), Some(80)),
            server(None, Some(6789)),
        ] {
            let mut store = PermissionStore::new();
            assert_eq!(store.state(&o), PermissionState::Prompt);
            store.grant(o.clone());
            assert_eq!(store.state(&o), PermissionState::Granted);
            let mut store = PermissionStore::new();
            store.deny(o.clone());
            assert_eq!(store.state(&o), PermissionState::Denied);
        }
    }

    // rule: PERM-UDP-HAS-02, PERM-TCP-HAS-02, PERM-SRV-HAS-02, ERR-10
    #[test]
    fn test_failed_query_is_unknown_error() {
        let e = SocketError::permission_query_failed();
        assert_eq!(e.kind(), ErrorName::UnknownError);
        assert_eq!(e.name(), "UnknownError");
        assert_eq!(e.cause(), Some(Cause::PermissionQueryFailed));
    }

    // rule: PERM-UDP-REQ-01, ERR-02
    #[test]
    fn test_udp_request_denied_remote_rejects_without_prompt() {
        let mut store = PermissionStore::new();
        store.deny(udp(Some(("127.0.0.2", 9)), None));
        let e = assert_security(store.request_step(&udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5000)))));
        assert!(e.message().unwrap().contains("remote"), "{e}");
    }

    // rule: PERM-UDP-REQ-02, ERR-02
    #[test]
    fn test_udp_request_denied_local_rejects_and_remote_is_checked_first() {
        let mut store = PermissionStore::new();
        store.deny(udp_opts(None, None, None, Some(5000)));
        let e = assert_security(store.request_step(&udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5000)))));
        assert!(e.message().unwrap().contains("local"), "{e}");
        // Both scopes denied: the remote one is reported.
        store.deny(udp_opts(Some("127.0.0.2"), None, None, None));
        let e = assert_security(store.request_step(&udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5000)))));
        assert!(e.message().unwrap().contains("remote"), "{e}");
        // A denial naming both sides is a local denial of that remote.
        let mut store = PermissionStore::new();
        store.deny(udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5000))));
        let e = assert_security(store.request_step(&udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5000)))));
        assert!(e.message().unwrap().contains("local"), "{e}");
        assert_eq!(store.request_step(&udp(Some(("127.0.0.2", 9)), None)), RequestStep::AskUser);
    }

    // rule: PERM-UDP-REQ-03, PERM-TCP-REQ-02, PERM-SRV-REQ-02
    #[test]
    fn test_trusted_or_granted_request_allows_without_prompt() {
        for o in [
            udp(Some(("127.0.0.1", 9)), Some(("127.0.0.1", 5000))),
            tcp(Some("127.0.0.1"), Some(80)),
            server(Some("127.0.0.1"), Some(80)),
        ] {
            let mut store = PermissionStore::new();
            assert_eq!(store.request_step(&o), RequestStep::AskUser);
            store.trust(o.clone());
            assert_eq!(store.request_step(&o), RequestStep::Allow);
            assert_eq!(store.state(&o), PermissionState::Granted);
            assert_eq!(store.decisions(o.kind)[0].verdict, Verdict::Trusted);
            let mut store = PermissionStore::new();
            store.grant(o.clone());
            assert_eq!(store.request_step(&o), RequestStep::Allow);
        }
        // An allow-list rule is a pre-arranged trust too.
        let store = PermissionStore::allow_list([rule("tcp:localhost:80")]);
        assert_eq!(store.request_step(&tcp(Some("LOCALHOST"), Some(80))), RequestStep::Allow);
    }

    // rule: PERM-UDP-REQ-04, PERM-TCP-REQ-03, PERM-SRV-REQ-03
    #[test]
    fn test_unknown_request_asks_and_a_yes_grants() {
        for o in [udp(None, Some(("::1", 5353))), tcp(Some("::1"), Some(443)), server(None, Some(6789))] {
            let mut store = PermissionStore::new();
            assert_eq!(store.request_step(&o), RequestStep::AskUser);
            assert_eq!(store.answer(o.clone(), true), Ok(()));
            assert_eq!(store.request_step(&o), RequestStep::Allow);
            assert_eq!(store.decisions(o.kind), [Decision { scope: o.clone(), verdict: Verdict::Granted }]);
        }
    }

    // rule: PERM-UDP-REQ-05, PERM-TCP-REQ-04, PERM-SRV-REQ-04, ERR-02
    #[test]
    fn test_a_no_rejects_security_error_and_is_stored() {
        for o in [udp(Some(("127.0.0.1", 9)), None), tcp(Some("127.0.0.1"), Some(80)), server(None, Some(80))]
        {
            let mut store = PermissionStore::new();
            let e = store.answer(o.clone(), false).unwrap_err();
            assert_eq!(e.kind(), ErrorName::SecurityError);
            assert_eq!(e.cause(), Some(Cause::PermissionDenied));
            assert_eq!(store.state(&o), PermissionState::Denied);
            assert_security(store.request_step(&o));
        }
    }

    // rule: PERM-TCP-REQ-01, PERM-SRV-REQ-01, ERR-02
    #[test]
    fn test_tcp_and_server_denied_scope_rejects_without_prompt() {
        let mut store = PermissionStore::new();
        store.deny(tcp(Some("127.0.0.2"), None));
        let e = assert_security(store.request_step(&tcp(Some("127.0.0.2"), Some(80))));
        assert!(e.message().unwrap().contains("connecting"), "{e}");
        assert_eq!(store.request_step(&tcp(Some("127.0.0.3"), Some(80))), RequestStep::AskUser);
        let mut store = PermissionStore::new();
        store.deny(server(None, Some(6789)));
        let e = assert_security(store.request_step(&server(Some("127.0.0.1"), Some(6789))));
        assert!(e.message().unwrap().contains("local"), "{e}");
        assert_eq!(store.request_step(&server(None, Some(6790))), RequestStep::AskUser);
    }

    // rule: ENTRY-01
    #[test]
    fn test_three_kinds_are_independent() {
        let mut store = PermissionStore::new();
        store.grant(PermissionRequest::new(PermissionKind::Udp));
        assert!(store.state(&PermissionRequest::new(PermissionKind::Udp)).is_granted());
        assert_eq!(store.state(&PermissionRequest::new(PermissionKind::Tcp)), PermissionState::Prompt);
        assert_eq!(store.state(&PermissionRequest::new(PermissionKind::TcpServer)), PermissionState::Prompt);
        store.deny(PermissionRequest::new(PermissionKind::Tcp));
        assert!(store.state(&PermissionRequest::new(PermissionKind::Udp)).is_granted());
        assert_eq!(store.state(&tcp(Some("a.test"), Some(1))), PermissionState::Denied);
        assert_eq!(store.state(&server(None, Some(1))), PermissionState::Prompt);
        assert!(store.decisions(PermissionKind::TcpServer).is_empty());
        // A rule of one kind does not reach the others.
        let store = PermissionStore::allow_list([rule("tcp:*:*")]);
        assert!(store.state(&PermissionRequest::new(PermissionKind::Tcp)).is_granted());
        assert_eq!(store.state(&PermissionRequest::new(PermissionKind::Udp)), PermissionState::Prompt);
        assert_eq!(store.state(&PermissionRequest::new(PermissionKind::TcpServer)), PermissionState::Prompt);
    }

    // rule: DICT-PERM-01
    #[test]
    fn test_udp_grant_without_remote_address_covers_any_peer() {
        let mut store = PermissionStore::new();
        store.grant(udp_opts(None, Some(9), None, None));
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.1", 9)).is_granted());
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.2", 9)).is_granted());
        assert!(!store.state(&PermissionRequest::udp_write("127.0.0.2", 10)).is_granted());
    }

    // rule: DICT-PERM-02
    #[test]
    fn test_udp_grant_without_remote_port_covers_any_port() {
        let mut store = PermissionStore::new();
        store.grant(udp_opts(Some("127.0.0.1"), None, None, None));
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.1", 1)).is_granted());
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.1", 65535)).is_granted());
        assert!(!store.state(&PermissionRequest::udp_write("127.0.0.2", 1)).is_granted());
    }

    // rule: DICT-PERM-03
    #[test]
    fn test_udp_grant_without_local_address_does_not_cover_a_local_address() {
        let mut store = PermissionStore::new();
        store.grant(PermissionRequest::new(PermissionKind::Udp));
        let bind = UdpOptions { local_address: Some("127.0.0.1".into()), ..UdpOptions::default() };
        assert_eq!(store.state(&PermissionRequest::udp_socket(&bind)), PermissionState::Prompt);
        assert!(store.state(&PermissionRequest::udp_socket(&UdpOptions::default())).is_granted());
        store.grant(udp_opts(None, None, Some("127.0.0.1"), None));
        assert!(store.state(&PermissionRequest::udp_socket(&bind)).is_granted());
    }

    // rule: DICT-PERM-04
    #[test]
    fn test_udp_grant_without_local_port_does_not_cover_a_port() {
        let mut store = PermissionStore::new();
        store.grant(PermissionRequest::new(PermissionKind::Udp));
        let bind = UdpOptions { local_port: Some(5000), ..UdpOptions::default() };
        assert_eq!(store.state(&PermissionRequest::udp_socket(&bind)), PermissionState::Prompt);
        // Port 0 is ephemeral, not a specific port (AMB-06).
        let ephemeral = UdpOptions { local_port: Some(0), ..UdpOptions::default() };
        assert!(store.state(&PermissionRequest::udp_socket(&ephemeral)).is_granted());
        store.grant(udp_opts(None, None, None, Some(5000)));
        assert!(store.state(&PermissionRequest::udp_socket(&bind)).is_granted());
        assert_eq!(
            store.state(&PermissionRequest::udp_socket(&UdpOptions {
                local_port: Some(5001),
                ..UdpOptions::default()
            })),
            PermissionState::Prompt
        );
    }

    // rule: DICT-PERM-05, DICT-PERM-06
    #[test]
    fn test_tcp_grant_omitted_fields_mean_any() {
        let mut store = PermissionStore::new();
        store.grant(tcp(None, Some(7)));
        assert!(store.state(&PermissionRequest::tcp_socket("127.0.0.1", 7)).is_granted());
        assert!(store.state(&PermissionRequest::tcp_socket("127.0.0.2", 7)).is_granted());
        assert!(!store.state(&PermissionRequest::tcp_socket("127.0.0.2", 8)).is_granted());
        let mut store = PermissionStore::new();
        store.grant(tcp(Some("svc.test"), None));
        assert!(store.state(&PermissionRequest::tcp_socket("SVC.test", 1)).is_granted());
        assert!(store.state(&PermissionRequest::tcp_socket("svc.test", 65535)).is_granted());
        assert!(!store.state(&PermissionRequest::tcp_socket("other.test", 1)).is_granted());
    }

    // rule: DICT-PERM-07
    #[test]
    fn test_server_grant_without_local_address_does_not_cover_one() {
        let mut store = PermissionStore::new();
        store.grant(server(None, Some(6789)));
        let port_only = TcpServerOptions { local_port: Some(6789), ..TcpServerOptions::default() };
        let with_addr = TcpServerOptions { local_address: Some("127.0.0.1".into()), ..port_only.clone() };
        assert!(store.state(&PermissionRequest::tcp_server(&port_only)).is_granted());
        assert_eq!(store.state(&PermissionRequest::tcp_server(&with_addr)), PermissionState::Prompt);
    }

    // rule: DICT-PERM-08
    #[test]
    fn test_server_grant_without_local_port_does_not_cover_one() {
        let mut store = PermissionStore::new();
        store.grant(server(None, None));
        let with_port = TcpServerOptions { local_port: Some(6789), ..TcpServerOptions::default() };
        assert_eq!(store.state(&PermissionRequest::tcp_server(&with_port)), PermissionState::Prompt);
        assert!(store.state(&PermissionRequest::tcp_server(&TcpServerOptions::default())).is_granted());
    }

    // rule: DICT-PERM-09, GEN-13
    #[test]
    fn test_matching_examples() {
        // The SSDP example: grant a remote pair, then `udp({})`, then write to that pair.
        let mut store = PermissionStore::new();
        store.grant(udp_opts(Some("239.255.255.250"), Some(1900), None, None));
        assert!(store.state(&PermissionRequest::udp_socket(&UdpOptions::default())).is_granted());
        assert!(store.state(&PermissionRequest::udp_write("239.255.255.250", 1900)).is_granted());
        assert!(!store.state(&PermissionRequest::udp_write("239.255.255.250", 1901)).is_granted());
        // deny {127.0.0.2:9} and grant {}: udp({}) ok, a write to 127.0.0.2:9 denied.
        let mut store = PermissionStore::new();
        store.deny(udp_opts(Some("127.0.0.2"), Some(9), None, None));
        store.grant(PermissionRequest::new(PermissionKind::Udp));
        assert!(store.state(&PermissionRequest::udp_socket(&UdpOptions::default())).is_granted());
        assert_eq!(store.state(&PermissionRequest::udp_write("127.0.0.2", 9)), PermissionState::Denied);
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.2", 10)).is_granted());
        // Literals compare by value (and mapped IPv4 is IPv4); names case-insensitively; never both.
        let mut store = PermissionStore::new();
        store.grant(udp_opts(Some("::1"), None, None, None));
        assert!(store.state(&PermissionRequest::udp_write("0:0:0:0:0:0:0:1", 5)).is_granted());
        store.deny(udp_opts(Some("127.0.0.2"), None, None, None));
        assert_eq!(
            store.state(&PermissionRequest::udp_write("::ffff:127.0.0.2", 5)),
            PermissionState::Denied
        );
        assert!(same_address("LocalHost", "localhost"));
        assert!(!same_address("localhost", "127.0.0.1"));
        assert!(!same_address("127.0.0.1", "127.0.0.01"));
    }

    // rule: DICT-PERM-09
    #[test]
    fn test_denial_wins_and_needs_all_its_fields() {
        let mut store = PermissionStore::new();
        store.deny(udp_opts(Some("127.0.0.2"), Some(9), None, None));
        store.grant(udp_opts(Some("127.0.0.2"), Some(9), None, None));
        assert_eq!(store.state(&PermissionRequest::udp_write("127.0.0.2", 9)), PermissionState::Denied);
        // A denial never reaches a request that omits one of its fields.
        assert_eq!(store.state(&udp_opts(Some("127.0.0.2"), None, None, None)), PermissionState::Granted);
        assert_eq!(store.state(&PermissionRequest::new(PermissionKind::Udp)), PermissionState::Granted);
        // A local denial reaches requests naming that local field, whatever else they name.
        let mut store = PermissionStore::allow_all();
        store.deny(udp_opts(None, None, None, Some(5000)));
        assert_eq!(store.state(&udp(Some(("a.test", 1)), Some(("::", 5000)))), PermissionState::Denied);
        assert!(store.state(&udp(Some(("a.test", 1)), Some(("::", 5001)))).is_granted());
    }

    // rule: DICT-PERM-09
    #[test]
    fn test_rules_parse_and_print() {
        for (text, printed) in [
            ("tcp:*:*", "tcp:*:*"),
            ("tcp:example.com:443", "tcp:example.com:443"),
            ("udp-remote:[::1]:8000-8100", "udp-remote:[::1]:8000-8100"),
            ("udp-remote:[0:0:0:0:0:0:0:1]:0-65535", "udp-remote:[::1]:*"),
            ("udp-local:127.0.0.1:5000", "udp-local:127.0.0.1:5000"),
            (" tcp-server:*:6789 ", "tcp-server:*:6789"),
            ("tcp-server:[::]:7-7", "tcp-server:[::]:7"),
        ] {
            let r: Rule = text.parse().unwrap();
            assert_eq!(r.to_string(), printed);
            assert_eq!(Rule::parse(&r.to_string()).unwrap(), r);
        }
        for bad in [
            "",
            "tcp",
            "tcp:*",
            "ftp:*:*",
            "TCP:*:*",
            "tcp:::1:80",
            "tcp:[::1]80",
            "tcp:[127.0.0.1]:80",
            "tcp:[::1:80",
            "tcp:a..b:80",
            "tcp:300.1.1.1:80",
            "tcp:*:65536",
            "tcp:*:9-8",
            "tcp:*:+8",
            "tcp:*:",
            "tcp:*:1-",
            "udp-local:localhost:5000",
            "tcp-server:host.test:*",
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorName::TypeError, "{bad:?}");
            assert!(e.message().is_some(), "{bad:?}");
        }
    }

    // rule: DICT-PERM-09, GEN-13
    #[test]
    fn test_rules_cover_by_scope() {
        let r = rule("tcp:[::1]:8000-8100");
        assert!(r.covers(&PermissionRequest::tcp_socket("0:0:0:0:0:0:0:1", 8000)));
        assert!(r.covers(&PermissionRequest::tcp_socket("::1", 8100)));
        assert!(!r.covers(&PermissionRequest::tcp_socket("::1", 8101)));
        assert!(!r.covers(&PermissionRequest::tcp_socket("127.0.0.1", 8050)));
        assert!(!r.covers(&PermissionRequest::udp_write("::1", 8050)));
        let r = rule("tcp:Svc.Test:*");
        assert!(r.covers(&PermissionRequest::tcp_socket("svc.test", 1)));
        assert!(!r.covers(&PermissionRequest::tcp_socket("svc.test.", 1)));
        let r = rule("tcp-server:*:6789");
        assert!(r.covers(&server(None, Some(6789))));
        assert!(r.covers(&server(Some("::"), Some(6789))));
        assert!(!r.covers(&server(None, Some(6790))));
        let r = rule("tcp-server:127.0.0.1:*");
        assert!(r.covers(&server(Some("127.0.0.1"), None)));
        assert!(!r.covers(&server(Some("127.0.0.2"), None)));
    }

    // rule: DICT-PERM-09, PERM-UDP-REQ-03
    #[test]
    fn test_udp_rules_need_each_side_covered() {
        let store =
            PermissionStore::allow_list([rule("udp-remote:127.0.0.1:9"), rule("udp-local:*:5000-5009")]);
        let both = udp(Some(("127.0.0.1", 9)), Some(("127.0.0.1", 5001)));
        assert!(!rule("udp-remote:127.0.0.1:9").covers(&both));
        assert!(store.state(&both).is_granted());
        assert_eq!(store.request_step(&both), RequestStep::Allow);
        assert_eq!(
            store.state(&udp(Some(("127.0.0.1", 9)), Some(("127.0.0.1", 6000)))),
            PermissionState::Prompt
        );
        assert_eq!(
            store.state(&udp(Some(("127.0.0.2", 9)), Some(("127.0.0.1", 5001)))),
            PermissionState::Prompt
        );
        assert!(store.state(&PermissionRequest::udp_write("127.0.0.1", 9)).is_granted());
        assert!(store.state(&udp(None, Some(("::", 5000)))).is_granted());
        assert!(store.state(&PermissionRequest::new(PermissionKind::Udp)).is_granted());
        // Local rules alone never let a socket send anywhere; remote rules never bind a port.
        let local_only = PermissionStore::allow_list([rule("udp-local:*:*")]);
        assert_eq!(local_only.state(&PermissionRequest::udp_write("127.0.0.1", 9)), PermissionState::Prompt);
        assert!(local_only.state(&udp(None, Some(("127.0.0.1", 1)))).is_granted());
        let remote_only = PermissionStore::allow_list([rule("udp-remote:*:*")]);
        assert_eq!(remote_only.state(&udp(None, Some(("127.0.0.1", 1)))), PermissionState::Prompt);
        // An empty allow list allows nothing, not even `udp({})`.
        assert_eq!(
            PermissionStore::allow_list([]).state(&PermissionRequest::new(PermissionKind::Udp)),
            PermissionState::Prompt
        );
    }

    // rule: DICT-PERM-09, PERM-GEN-04
    #[test]
    fn test_allow_all_and_deny_all() {
        let allow = PermissionStore::allow_all();
        let deny = PermissionStore::deny_all();
        for r in [
            udp(Some(("300.1.1.1", 0)), Some(("nonsense", 1))),
            PermissionRequest::new(PermissionKind::Udp),
            tcp(Some("localhost"), Some(80)),
            server(Some("::"), Some(0)),
        ] {
            assert_eq!(allow.state(&r), PermissionState::Granted, "{r:?}");
            assert_eq!(allow.request_step(&r), RequestStep::Allow);
            assert_eq!(deny.state(&r), PermissionState::Denied, "{r:?}");
            assert_security(deny.request_step(&r));
        }
        let mut allow = allow;
        allow.deny(tcp(Some("127.0.0.9"), None));
        assert_eq!(allow.state(&tcp(Some("127.0.0.9"), Some(1))), PermissionState::Denied);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn test_serde_shapes() {
        assert_eq!(serde_json::to_string(&PermissionState::Prompt).unwrap(), "\"prompt\"");
        assert_eq!(serde_json::to_string(&PermissionKind::TcpServer).unwrap(), "\"tcp-server\"");
        assert_eq!(serde_json::to_string(&rule("udp-remote:[::1]:1-2")).unwrap(), "\"udp-remote:[::1]:1-2\"");
        assert!(serde_json::from_str::<Rule>("\"udp:*:*\"").is_err());
        let opts: UdpPermissionOptions = serde_json::from_str(r#"{"remote_port": 9}"#).unwrap();
        assert_eq!(opts, UdpPermissionOptions { remote_port: Some(9), ..Default::default() });
        let mut store = PermissionStore::allow_list([rule("tcp:*:80")]);
        store.deny(udp(Some(("::1", 1)), None));
        let back: PermissionStore = serde_json::from_str(&serde_json::to_string(&store).unwrap()).unwrap();
        assert_eq!(back, store);
    }

    // --- properties ---------------------------------------------------------------------------

    /// Addresses with alternative spellings of the same value, names in two cases, and a literal
    /// that looks like nothing else.
    const ADDRESSES: [&str; 8] = [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.2",
        "localhost",
        "LocalHost",
        "svc.test",
    ];

    fn field_addr() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop::sample::select(&ADDRESSES[..]).prop_map(str::to_owned))
    }

    fn field_port() -> impl Strategy<Value = Option<u16>> {
        prop::option::of(prop::sample::select(&[0u16, 9, 10][..]))
    }

    fn request() -> impl Strategy<Value = PermissionRequest> {
        (field_addr(), field_port(), field_addr(), field_port()).prop_map(|(ra, rp, la, lp)| {
            PermissionRequest {
                kind: PermissionKind::Udp,
                remote_address: ra,
                remote_port: rp,
                local_address: la,
                local_port: lp,
            }
        })
    }

    fn decision() -> impl Strategy<Value = Decision> {
        (request(), prop::sample::select(&[Verdict::Granted, Verdict::Denied, Verdict::Trusted][..]))
            .prop_map(|(scope, verdict)| Decision { scope, verdict })
    }

    fn store_of(decisions: &[Decision]) -> PermissionStore {
        let mut store = PermissionStore::new();
        for d in decisions {
            match d.verdict {
                Verdict::Granted => store.grant(d.scope.clone()),
                Verdict::Denied => store.deny(d.scope.clone()),
                Verdict::Trusted => store.trust(d.scope.clone()),
            }
        }
        store
    }

    /// An independent formulation of DICT-PERM-09 over normalised fields.
    fn model_state(decisions: &[Decision], r: &PermissionRequest) -> PermissionState {
        #[derive(PartialEq)]
        enum Key {
            Ip(IpAddr),
            Name(String),
        }
        let key = |a: &Option<String>| {
            a.as_ref().map(|a| match a.parse::<IpAddr>() {
                Ok(ip) => Key::Ip(ip.to_canonical()),
                Err(_) => Key::Name(a.to_ascii_lowercase()),
            })
        };
        let lport = |p: Option<u16>| p.filter(|&p| p != 0);
        let fields = |x: &PermissionRequest| {
            [(key(&x.remote_address), x.remote_port), (key(&x.local_address), lport(x.local_port))]
        };
        let present_in = |sub: &PermissionRequest, sup: &PermissionRequest| {
            let (a, b) = (fields(sub), fields(sup));
            (0..2).all(|i| (a[i].0.is_none() || a[i].0 == b[i].0) && (a[i].1.is_none() || a[i].1 == b[i].1))
        };
        let covers = |g: &PermissionRequest| {
            let (gf, rf) = (fields(g), fields(r));
            let remote = (rf[0].0.is_none() || gf[0].0.is_none() || rf[0].0 == gf[0].0)
                && (rf[0].1.is_none() || gf[0].1.is_none() || rf[0].1 == gf[0].1);
            let local_of_r_in_g = PermissionRequest { remote_address: None, remote_port: None, ..r.clone() };
            remote && present_in(&local_of_r_in_g, g)
        };
        if decisions.iter().any(|d| d.verdict == Verdict::Denied && present_in(&d.scope, r)) {
            PermissionState::Denied
        } else if decisions.iter().any(|d| d.verdict != Verdict::Denied && covers(&d.scope)) {
            PermissionState::Granted
        } else {
            PermissionState::Prompt
        }
    }

    proptest! {
        // rule: DICT-PERM-09, PERM-GEN-04, PERM-GEN-05, GEN-13
        #[test]
        fn prop_state_follows_dict_perm_09(
            decisions in prop::collection::vec(decision(), 0..8),
            requests in prop::collection::vec(request(), 1..8),
            seed in any::<u64>(),
        ) {
            let store = store_of(&decisions);
            let before = store.clone();
            // Order of decisions never matters (denial wins whatever the order).
            let mut reversed = decisions.clone();
            reversed.rotate_left((seed as usize) % decisions.len().max(1));
            reversed.reverse();
            let other = store_of(&reversed);
            for r in &requests {
                let state = store.state(r);
                prop_assert_eq!(state, model_state(&decisions, r), "request {:?}", r);
                prop_assert_eq!(state, other.state(r));
                // A matching denial always wins.
                let mut denied = store.clone();
                denied.deny(r.clone());
                prop_assert_eq!(denied.state(r), PermissionState::Denied);
                // A grant for exactly R grants R unless a denial matches.
                let mut granted = store.clone();
                granted.grant(r.clone());
                prop_assert_eq!(
                    granted.state(r),
                    if state == PermissionState::Denied { PermissionState::Denied } else { PermissionState::Granted }
                );
                // Dropping a field from R never loses coverage and never adds a denial.
                for smaller in [
                    PermissionRequest { remote_address: None, ..r.clone() },
                    PermissionRequest { remote_port: None, ..r.clone() },
                    PermissionRequest { local_address: None, ..r.clone() },
                    PermissionRequest { local_port: None, ..r.clone() },
                ] {
                    let s = store.state(&smaller);
                    if state == PermissionState::Granted {
                        prop_assert_eq!(s, PermissionState::Granted);
                    }
                    if s == PermissionState::Denied {
                        prop_assert_eq!(state, PermissionState::Denied);
                    }
                }
                // The request step agrees with the state.
                match (store.request_step(r), state) {
                    (RequestStep::Reject(e), PermissionState::Denied) => prop_assert_eq!(e.kind(), ErrorName::SecurityError),
                    (RequestStep::Allow, PermissionState::Granted) | (RequestStep::AskUser, PermissionState::Prompt) => {}
                    (step, state) => prop_assert!(false, "step {:?} for state {:?}", step, state),
                }
            }
            // `state` and `request_step` never change the store.
            prop_assert_eq!(store, before);
        }

        // rule: DICT-PERM-09
        #[test]
        fn prop_rules_round_trip(
            scope in prop::sample::select(&[RuleScope::Tcp, RuleScope::UdpRemote, RuleScope::UdpLocal, RuleScope::TcpServer][..]),
            host in prop::sample::select(&["*", "127.0.0.1", "[::1]", "[::ffff:1.2.3.4]", "svc.test"][..]),
            a in any::<u16>(),
            b in any::<u16>(),
            text in ".{0,24}",
        ) {
            let ports = if a == b { a.to_string() } else { format!("{}-{}", a.min(b), a.max(b)) };
            let line = format!("{}:{}:{}", scope.keyword(), host, ports);
            match Rule::parse(&line) {
                Ok(r) => prop_assert_eq!(Rule::parse(&r.to_string()).unwrap(), r),
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorName::TypeError);
                    prop_assert!(host == "svc.test" && !scope.is_remote());
                }
            }
            // Arbitrary text never panics and fails only with TypeError.
            if let Err(e) = Rule::parse(&text) {
                prop_assert_eq!(e.kind(), ErrorName::TypeError);
            }
        }
    }
}
