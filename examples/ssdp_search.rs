//! The spec's UPnP SSDP M-SEARCH example: send a discovery request to the SSDP multicast group
//! and print the answers — kept on this machine.
//!
//! ```text
//! cargo run --example ssdp_search [PORT] [--with-device]
//!     # group 239.255.255.250, port SSDP_PORT or 1900; waits SSDP_WAIT_SECS (default 3) for answers
//! ```
//!
//! The network pins the multicast interface to 127.0.0.1 and every socket uses TTL 0, so the
//! M-SEARCH never leaves the machine (only SSDP devices on this host can answer). With
//! `--with-device` the example also runs a small fake device on the group, so something answers.
//!
//! As in the spec: request `udpPermission` for the group's address and port, create a
//! `UDPSocket` with no options (permission for the pair covers it, DICT-PERM-09), join the group,
//! write the M-SEARCH to the group and read the responses. [`search`] and [`device`] are the
//! example's logic; `conformance/src/scenarios/examples.rs` runs them on loopback and in the simulator.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use tcpudp::{
    Datagram, Network, Policy, SocketError, UdpMessage, UdpOptions, UdpPermissionOptions, UdpSocket,
};

/// The SSDP multicast group.
pub const SSDP_GROUP: &str = "239.255.255.250";
/// The SSDP port.
pub const SSDP_PORT: u16 = 1900;
/// The search target of the spec's example.
pub const SERVICE_TYPE: &str = "upnp:rootdevice";

/// The spec's M-SEARCH message (with the blank line that ends an SSDP request).
pub fn m_search(group: &str, port: u16) -> String {
    let rn = "\r\n";
    let mut search = String::new();
    search += &format!("M-SEARCH * HTTP/1.1{rn}");
    search += &format!("ST: {SERVICE_TYPE}{rn}");
    search += &format!("MAN: \"ssdp:discover\"{rn}");
    search += &format!("HOST: {group}:{port}{rn}");
    search += &format!("MX: 10{rn}{rn}");
    search
}

/// Multicast options of every socket here: TTL 0, so nothing is forwarded off this host.
fn local_only() -> UdpOptions {
    UdpOptions { multicast_ttl: 0, ..UdpOptions::default() }
}

/// Sends one M-SEARCH to `group:port` and collects responses until `wait` has passed or
/// `max_responses` have arrived.
pub async fn search(
    net: &Network,
    group: &str,
    port: u16,
    wait: Duration,
    max_responses: usize,
) -> Result<Vec<UdpMessage>, SocketError> {
    // Request permission to send multicast messages to the address and port reserved for SSDP.
    let permission = UdpPermissionOptions {
        remote_address: Some(group.to_owned()),
        remote_port: Some(port),
        ..UdpPermissionOptions::default()
    };
    if let Err(e) = net.udp_permission().request_permission(Some(permission)).await {
        eprintln!("Sending SSDP multicast messages was denied due to error: {e}");
        return Err(e);
    }
    // Permission was granted: create a new UDP socket.
    let my_socket = UdpSocket::new(net, local_only())?;
    // Join the SSDP multicast group.
    my_socket.join_multicast(group)?;
    // Send the SSDP M-SEARCH multicast message.
    let writer = my_socket.writable()?;
    let sent = writer.write(Datagram::to(Bytes::from(m_search(group, port)), group, port));
    match my_socket.opened().await {
        Ok(()) => println!("UDP socket created successfully"),
        Err(e) => {
            eprintln!("UDP socket setup failed due to error: {e}");
            return Err(e);
        }
    }
    if let Err(e) = sent.await {
        eprintln!("Sending error: {e}");
        return Err(e);
    }
    println!("M-SEARCH Sent");
    // Receive and log SSDP M-SEARCH response messages.
    let mut reader = my_socket.readable()?;
    let mut responses = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while responses.len() < max_responses {
        match tokio::time::timeout_at(deadline, reader.read()).await {
            Ok(Ok(Some(value))) => {
                println!(
                    "Remote address: {} Remote port: {} Message: {}",
                    value.remote_address(),
                    value.remote_port(),
                    String::from_utf8_lossy(&value.data)
                );
                responses.push(value);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) => break, // waited long enough
        }
    }
    drop((reader, writer));
    match my_socket.close().await {
        Ok(()) => println!("Socket has been cleanly closed"),
        Err(e) => eprintln!("Socket closed due to error: {e}"),
    }
    Ok(responses)
}

/// A fake SSDP device: joins `group` on `port` (0: an ephemeral port), reports the bound port to
/// `on_ready`, and answers `answers` M-SEARCH requests with a unicast response to their sender.
pub async fn device(
    net: &Network,
    group: &str,
    port: u16,
    answers: usize,
    on_ready: impl FnOnce(u16),
) -> Result<(), SocketError> {
    let sock = UdpSocket::new(net, UdpOptions { local_port: Some(port), ..local_only() })?;
    sock.join_multicast(group)?;
    sock.opened().await?;
    on_ready(sock.local_port().unwrap_or(port));
    let mut reader = sock.readable()?;
    let writer = sock.writable()?;
    let mut answered = 0;
    while answered < answers {
        let Some(request) = reader.read().await? else { break };
        if !request.data.starts_with(b"M-SEARCH * HTTP/1.1\r\n") {
            continue;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=60\r\nST: {SERVICE_TYPE}\r\nUSN: uuid:tcpudp-example::{SERVICE_TYPE}\r\nLOCATION: http://127.0.0.1/description.xml\r\n\r\n"
        );
        writer
            .write(Datagram::to(Bytes::from(response), request.remote_address(), request.remote_port()))
            .await?;
        answered += 1;
    }
    drop((reader, writer));
    sock.close().await
}

/// The "user" of this example: grants every request, and says so.
pub fn granting_user() -> Policy {
    Policy::prompt(|request| {
        eprintln!("permission requested: {request:?}: granted");
        Box::pin(async { true })
    })
}

/// A network whose multicast stays on loopback (interface 127.0.0.1).
pub fn loopback_network(policy: Policy) -> Result<Network, SocketError> {
    tcpudp_net_real::network_with_multicast_interface(policy, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_device = args.iter().any(|a| a == "--with-device");
    let port =
        match args.iter().find(|a| !a.starts_with("--")).cloned().or_else(|| std::env::var("SSDP_PORT").ok())
        {
            None => SSDP_PORT,
            Some(t) => t
                .parse()
                .map_err(|_| format!("not a port: {t:?} (usage: ssdp_search [PORT] [--with-device])"))?,
        };
    let wait = match std::env::var("SSDP_WAIT_SECS") {
        Ok(t) => {
            Duration::from_secs(t.parse().map_err(|_| format!("SSDP_WAIT_SECS is not a number: {t:?}"))?)
        }
        Err(_) => Duration::from_secs(3),
    };
    let net = loopback_network(granting_user())?;
    let fake = if with_device {
        let device_net = loopback_network(Policy::allow_all())?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            device(&device_net, SSDP_GROUP, port, 1, move |_| {
                let _ = ready_tx.send(());
            })
            .await
        });
        let _ = ready_rx.await;
        Some(task)
    } else {
        None
    };
    let responses = search(&net, SSDP_GROUP, port, wait, usize::MAX).await?;
    println!("{} response(s)", responses.len());
    if let Some(task) = fake {
        task.abort();
    }
    Ok(())
}
