//! `tcpudp-conformance`: the project's main job.
fn main() {
    println!("tcpudp-conformance: being built");
}
