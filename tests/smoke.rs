//! The same application code on both backends: TCP echo, accept order, UDP echo (the first entries
//! of the conformance command's built-in scenarios).

use tcpudp_conformance::{on_both_backends, scenarios};

on_both_backends! {
    // rule: TCP-OPEN-01, TCP-WRITE-01, TCP-READ-01, TCP-HALFCLOSE-02, TCP-READ-CLOSE-01, SRV-OPEN-01, SRV-ACCEPT-01
    fn tcp_echo(world: &mut World) {
        scenarios::tcp_echo(world)
    }

    // rule: SRV-LISTEN-03, GEN-10
    fn accepts_in_order(world: &mut World) {
        scenarios::accepts_in_order(world)
    }

    // rule: UDP-OPEN-01, UDP-WRITE-06, UDP-READ-01, UDP-READ-02, UDP-READ-03, UDP-CTOR-15
    fn udp_echo(world: &mut World) {
        scenarios::udp_echo(world)
    }
}
