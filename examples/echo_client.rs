//! The spec's TCP echo client example: send "Hello World" to the server on 127.0.0.1 port 6789
//! and print what comes back.
//!
//! ```text
//! cargo run --example echo_server &               # in another terminal
//! cargo run --example echo_client [ADDRESS] [PORT] [MESSAGE]
//!     # defaults: ECHO_ADDRESS or 127.0.0.1, ECHO_PORT or 6789, "Hello World"
//! ```
//!
//! As in the spec: request `tcpPermission` for the server (the "user" here is a prompt that
//! grants), create the `TCPSocket`, write, `halfClose()` ("we won't be writing any more"), read
//! the answer, then `close()`. [`run`] is the example's logic; `conformance/src/scenarios/examples.rs` runs it.

use bytes::Bytes;
use tcpudp::{Network, Policy, SocketError, TcpOptions, TcpPermissionOptions, TcpSocket};

/// The spec's server address and port, and message.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1";
/// The spec's port.
pub const DEFAULT_PORT: u16 = 6789;
/// The spec's message.
pub const MESSAGE: &str = "Hello World";

/// Connects to `address:port` (after asking permission), sends `message`, half-closes, and
/// returns everything the server sent back before closing.
pub async fn run(net: &Network, address: &str, port: u16, message: &[u8]) -> Result<Vec<u8>, SocketError> {
    // Request permission to connect to the server.
    let permission =
        TcpPermissionOptions { remote_address: Some(address.to_owned()), remote_port: Some(port) };
    if let Err(e) = net.tcp_permission().request_permission(Some(permission)).await {
        eprintln!("Connection to {address} on port {port} was denied due to error: {e}");
        return Err(e);
    }
    // Permission was granted: create a new TCP client socket and connect to the server.
    let my_socket = TcpSocket::new(net, address, port, TcpOptions::default())?;
    let writer = my_socket.writable()?;
    // Send data to the server.
    let sent = writer.write(Bytes::copy_from_slice(message));
    // Signal that we won't be writing any more and can close the write half of the connection.
    my_socket.half_close();
    match my_socket.opened().await {
        Ok(()) => println!("TCP connection established successfully"),
        Err(e) => {
            eprintln!("TCP connection setup failed due to error: {e}");
            return Err(e);
        }
    }
    sent.await?;
    println!("Data has been sent to server");
    let mut reader = my_socket.readable()?;
    let mut received = Vec::new();
    while let Some(value) = reader.read().await? {
        println!("Data received from server: {}", String::from_utf8_lossy(&value));
        received.extend_from_slice(&value);
    }
    drop((reader, writer));
    // Close the TCP connection.
    match my_socket.close().await {
        Ok(()) => println!("TCP socket has been cleanly closed"),
        Err(e) => {
            eprintln!("TCP socket closed due to error: {e}");
            return Err(e);
        }
    }
    Ok(received)
}

/// The "user" of this example: grants every request, and says so.
pub fn granting_user() -> Policy {
    Policy::prompt(|request| {
        eprintln!("permission requested: {request:?}: granted");
        Box::pin(async { true })
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .or_else(|| std::env::var("ECHO_ADDRESS").ok())
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
    let port = match args.next().or_else(|| std::env::var("ECHO_PORT").ok()) {
        None => DEFAULT_PORT,
        Some(t) => t
            .parse()
            .map_err(|_| format!("not a port: {t:?} (usage: echo_client [ADDRESS] [PORT] [MESSAGE])"))?,
    };
    let message = args.next().unwrap_or_else(|| MESSAGE.to_owned());
    let net = tcpudp_net_real::network(granting_user())?;
    let echoed = run(&net, &address, port, message.as_bytes()).await?;
    println!("{}", String::from_utf8_lossy(&echoed));
    Ok(())
}
