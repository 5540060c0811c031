//! `TCPSocket`. Placeholder: being written.
/// Placeholder.
#[derive(Debug)]
pub struct TcpMachine;
