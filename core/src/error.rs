//! Errors with the spec's names (RULES.md §8) and a finer cause.
//!
//! Every rejection carries an [`ErrorName`] (GEN-04); [`Cause`] says what happened underneath
//! (refused, reset, timed out, …) without changing the name the spec prescribes.

use core::fmt;
use std::sync::Arc;

/// The WebIDL error names the spec uses, plus the two this project resolved (DESIGN §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ErrorName {
    /// A network operation failed (connect, send, receive, close handshake, bind…).
    NetworkError,
    /// Permission is missing or was refused.
    SecurityError,
    /// An address, port or option is not valid or not usable.
    InvalidAccessError,
    /// The object is in the wrong state for the operation.
    InvalidStateError,
    /// The operation was abandoned by the application (`close()` while opening, `reset()`, abort).
    AbortError,
    /// Misuse of a stream, or a value of the wrong type.
    TypeError,
    /// The permission state could not be read (AMB-02).
    UnknownError,
    /// TLS asked of a build or server without it (AMB-44).
    NotSupportedError,
}

impl ErrorName {
    /// Every name, in declaration order.
    pub const ALL: [ErrorName; 8] = [
        ErrorName::NetworkError,
        ErrorName::SecurityError,
        ErrorName::InvalidAccessError,
        ErrorName::InvalidStateError,
        ErrorName::AbortError,
        ErrorName::TypeError,
        ErrorName::UnknownError,
        ErrorName::NotSupportedError,
    ];

    /// The exact WebIDL spelling, e.g. `"NetworkError"`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorName::NetworkError => "NetworkError",
            ErrorName::SecurityError => "SecurityError",
            ErrorName::InvalidAccessError => "InvalidAccessError",
            ErrorName::InvalidStateError => "InvalidStateError",
            ErrorName::AbortError => "AbortError",
            ErrorName::TypeError => "TypeError",
            ErrorName::UnknownError => "UnknownError",
            ErrorName::NotSupportedError => "NotSupportedError",
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong underneath a [`ErrorName`]; more may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Cause {
    /// The peer refused the connection (RST in answer to SYN).
    Refused,
    /// The connection was reset.
    Reset,
    /// A timer ran out: connect timeout, close timeout, retransmissions, keep-alive.
    TimedOut,
    /// A host name did not resolve.
    HostNotFound,
    /// The local address and port are in use.
    AddressInUse,
    /// No route to the destination, or the local address is not usable for it.
    Unreachable,
    /// The address family of the destination differs from the socket's.
    FamilyMismatch,
    /// A datagram larger than the family's maximum (65,507 bytes IPv4, 65,527 IPv6).
    MessageTooLarge,
    /// The TLS handshake or session failed.
    Tls(TlsCause),
    /// The connection ended without TLS close_notify.
    Truncated,
    /// The permission policy could not be queried.
    PermissionQueryFailed,
    /// The user or policy refused permission.
    PermissionDenied,
    /// Resources (descriptors, memory) ran out.
    ResourcesExhausted,
    /// The stream was already closed (write after close).
    StreamClosed,
    /// A stream lock is held (a second reader or writer).
    StreamLocked,
    /// Received data could not be converted to bytes.
    Conversion,
    /// Any other OS or simulator error.
    Other,
}

/// Which TLS check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum TlsCause {
    /// The certificate chain does not lead to a trusted root.
    UnknownIssuer,
    /// The certificate is not valid for the name or address asked for.
    NameMismatch,
    /// The certificate is expired or not yet valid.
    Expired,
    /// The peer broke the TLS protocol (or spoke something else).
    Protocol,
    /// A client certificate was required and missing, or rejected.
    ClientCertificate,
    /// The handshake did not finish in time.
    HandshakeTimeout,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Cause::Refused => "connection refused",
            Cause::Reset => "connection reset",
            Cause::TimedOut => "timed out",
            Cause::HostNotFound => "host not found",
            Cause::AddressInUse => "address in use",
            Cause::Unreachable => "unreachable",
            Cause::FamilyMismatch => "address family mismatch",
            Cause::MessageTooLarge => "message too large",
            Cause::Tls(TlsCause::UnknownIssuer) => "TLS: unknown issuer",
            Cause::Tls(TlsCause::NameMismatch) => "TLS: name mismatch",
            Cause::Tls(TlsCause::Expired) => "TLS: certificate expired",
            Cause::Tls(TlsCause::Protocol) => "TLS: protocol error",
            Cause::Tls(TlsCause::ClientCertificate) => "TLS: client certificate",
            Cause::Tls(TlsCause::HandshakeTimeout) => "TLS: handshake timed out",
            Cause::Truncated => "truncated (no TLS close_notify)",
            Cause::PermissionQueryFailed => "permission query failed",
            Cause::PermissionDenied => "permission denied",
            Cause::ResourcesExhausted => "resources exhausted",
            Cause::StreamClosed => "stream closed",
            Cause::StreamLocked => "stream locked",
            Cause::Conversion => "data conversion failed",
            Cause::Other => "other",
        };
        f.write_str(text)
    }
}

/// An error as the spec names it, with an optional cause and message.
///
/// `Clone + Eq`, cheap to clone (the message is shared), so one stored error can reject every later
/// read and write (INV-06, INV-11).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SocketError {
    name: ErrorName,
    cause: Option<Cause>,
    message: Option<Arc<str>>,
}

impl SocketError {
    /// An error with this name and no cause.
    pub const fn new(name: ErrorName) -> Self {
        SocketError { name, cause: None, message: None }
    }

    /// An error with this name and cause.
    pub const fn with_cause(name: ErrorName, cause: Cause) -> Self {
        SocketError { name, cause: Some(cause), message: None }
    }

    /// `NetworkError` with a cause.
    pub const fn network(cause: Cause) -> Self {
        Self::with_cause(ErrorName::NetworkError, cause)
    }

    /// `InvalidAccessError`.
    pub const fn invalid_access() -> Self {
        Self::new(ErrorName::InvalidAccessError)
    }

    /// `InvalidStateError`.
    pub const fn invalid_state() -> Self {
        Self::new(ErrorName::InvalidStateError)
    }

    /// `AbortError`.
    pub const fn abort() -> Self {
        Self::new(ErrorName::AbortError)
    }

    /// `TypeError`.
    pub const fn type_error() -> Self {
        Self::new(ErrorName::TypeError)
    }

    /// `SecurityError` (permission denied).
    pub const fn security() -> Self {
        Self::with_cause(ErrorName::SecurityError, Cause::PermissionDenied)
    }

    /// The same error with a human-readable message (for example an abort reason, A-18).
    pub fn with_message(mut self, message: impl Into<Arc<str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The error's name in the spec.
    pub const fn kind(&self) -> ErrorName {
        self.name
    }

    /// The exact WebIDL spelling of the name (`e.name() == "NetworkError"`).
    pub const fn name(&self) -> &'static str {
        self.name.name()
    }

    /// What happened underneath, when known.
    pub const fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// The message, when one was given.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Some(cause) = self.cause {
            write!(f, " ({cause})")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SocketError {}

impl From<SocketError> for std::io::Error {
    fn from(e: SocketError) -> Self {
        use std::io::ErrorKind;
        let kind = match (e.name, e.cause) {
            (_, Some(Cause::Refused)) => ErrorKind::ConnectionRefused,
            (_, Some(Cause::Reset)) => ErrorKind::ConnectionReset,
            (_, Some(Cause::TimedOut)) => ErrorKind::TimedOut,
            (_, Some(Cause::AddressInUse)) => ErrorKind::AddrInUse,
            (_, Some(Cause::Truncated)) => ErrorKind::UnexpectedEof,
            (ErrorName::SecurityError, _) => ErrorKind::PermissionDenied,
            (ErrorName::InvalidAccessError, _) | (ErrorName::TypeError, _) => ErrorKind::InvalidInput,
            (ErrorName::AbortError, _) => ErrorKind::ConnectionAborted,
            (ErrorName::NotSupportedError, _) => ErrorKind::Unsupported,
            (ErrorName::InvalidStateError, _) => ErrorKind::NotConnected,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: GEN-04, ERR-01, ERR-06
    #[test]
    fn every_name_is_the_webidl_spelling() {
        let names: Vec<&str> = ErrorName::ALL.iter().map(|n| n.name()).collect();
        assert_eq!(
            names,
            [
                "NetworkError",
                "SecurityError",
                "InvalidAccessError",
                "InvalidStateError",
                "AbortError",
                "TypeError",
                "UnknownError",
                "NotSupportedError"
            ]
        );
        assert_eq!(SocketError::network(Cause::Reset).name(), "NetworkError");
    }

    #[test]
    fn display_carries_cause_and_message() {
        let e = SocketError::abort().with_message("stop");
        assert_eq!(e.to_string(), "AbortError: stop");
        assert_eq!(SocketError::network(Cause::Refused).to_string(), "NetworkError (connection refused)");
    }

    #[test]
    fn converts_to_io_error_keeping_the_kind() {
        let io: std::io::Error = SocketError::network(Cause::Reset).into();
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        let inner = io.into_inner().unwrap().downcast::<SocketError>().unwrap();
        assert_eq!(inner.cause(), Some(Cause::Reset));
    }
}
