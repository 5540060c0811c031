//! The spec's TCP echo server example: listen on port 6789 and send back whatever each client
//! sends, until the client closes its side.
//!
//! ```text
//! cargo run --example echo_server [PORT]          # default: ECHO_PORT or 6789, on 127.0.0.1
//! ```
//!
//! As in the spec, the server first asks `tcpServerPermission` for the port (here the "user" is a
//! prompt that grants and says so on stderr), then creates the `TCPServerSocket` and calls
//! `listen()` again after every accepted connection. It binds 127.0.0.1 only, so nothing outside
//! this machine can reach it. [`serve`] is the example's logic; `conformance/src/scenarios/examples.rs` runs it on
//! real sockets and in the simulator.

use bytes::Bytes;
use tcpudp::{
    Network, Policy, SocketError, TcpServerOptions, TcpServerPermissionOptions, TcpServerSocket, TcpSocket,
};

/// The spec's port.
pub const DEFAULT_PORT: u16 = 6789;

/// Requests permission to listen on `address:port`, creates the server socket there, and echoes
/// every connection. `on_listening` gets the bound port (useful with port 0). Returns after
/// `max_connections` connections have been served and closed (`None`: serves for ever).
pub async fn serve(
    net: &Network,
    address: &str,
    port: u16,
    max_connections: Option<usize>,
    on_listening: impl FnOnce(u16),
) -> Result<(), SocketError> {
    // Request permission to listen on the port.
    let permission =
        TcpServerPermissionOptions { local_address: Some(address.to_owned()), local_port: Some(port) };
    net.tcp_server_permission().request_permission(Some(permission)).await?;
    // Permission was granted: create a server socket that listens on the port.
    let server = TcpServerSocket::new(
        net,
        TcpServerOptions {
            local_address: Some(address.to_owned()),
            local_port: Some(port),
            ..TcpServerOptions::default()
        },
    )?;
    match server.opened().await {
        Ok(()) => println!("TCP server socket created successfully"),
        Err(e) => {
            eprintln!("TCP server socket creation failed due to error: {e}");
            return Err(e);
        }
    }
    on_listening(server.local_port().unwrap_or(port));
    let mut served = Vec::new();
    while max_connections.is_none_or(|max| served.len() < max) {
        // Listen for connection attempts from TCP clients.
        match server.listen().await {
            Ok(connected) => {
                println!(
                    "Connection accepted from address: {} port: {}",
                    connected.remote_address(),
                    connected.remote_port()
                );
                served.push(tokio::spawn(echo(connected)));
            }
            Err(e) if e.kind() == tcpudp::ErrorName::NetworkError => {
                // A client connection attempt failed: continue to listen for new connections.
                eprintln!("A client connection attempt failed: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    for connection in served {
        match connection.await {
            Ok(result) => result?,
            Err(join) => eprintln!("a connection task ended abnormally: {join}"),
        }
    }
    server.close().await?;
    println!("TCP server socket has been cleanly closed");
    Ok(())
}

/// Sends back everything the client sends; when the client has closed its side, the socket
/// closes once the echo has been sent (AMB-20).
pub async fn echo(connected: TcpSocket) -> Result<(), SocketError> {
    let mut reader = connected.readable()?;
    let writer = connected.writable()?;
    // Wait for data.
    while let Some(value) = reader.read().await? {
        println!("Received: {}", String::from_utf8_lossy(&value));
        // Send data back.
        let sent: Bytes = value;
        match writer.write(sent).await {
            Ok(()) => println!("Sending data succeeded"),
            Err(e) => eprintln!("Failed to send: {e}"),
        }
    }
    drop((reader, writer));
    connected.closed().await
}

/// The "user" of this example: grants every request, and says so.
pub fn granting_user() -> Policy {
    Policy::prompt(|request| {
        eprintln!("permission requested: {request:?}: granted");
        Box::pin(async { true })
    })
}

/// The port from the first argument, else `ECHO_PORT`, else 6789.
fn port_from_args() -> Result<u16, String> {
    let text = std::env::args().nth(1).or_else(|| std::env::var("ECHO_PORT").ok());
    match text {
        None => Ok(DEFAULT_PORT),
        Some(t) => t.parse().map_err(|_| format!("not a port: {t:?} (usage: echo_server [PORT])")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;
    let net = tcpudp_net_real::network(granting_user())?;
    serve(&net, "127.0.0.1", port, None, |p| println!("listening on 127.0.0.1:{p}")).await?;
    Ok(())
}
