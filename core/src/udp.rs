//! `UDPSocket`. Placeholder: being written.
/// Placeholder.
#[derive(Debug)]
pub struct UdpMachine;
