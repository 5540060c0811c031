//! TLS interop on the real backend with peers this library did not write: Python's `ssl` module
//! and `openssl s_server` / `s_client`, as server and as client, on 127.0.0.1 only. Peers bind
//! port 0 and report their port; certificates are generated at test time. A peer whose program is
//! missing is skipped with a printed reason (nothing is installed by the tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::tls_support::{read_n, within, Leaf, Pki, TestError};
use bytes::Bytes;
use tcpudp::{
    Cause, ErrorName, Network, Policy, SocketError, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket,
    TlsCause, TlsContext,
};

/// Why these tests do not run on the other backend.
const IN_SIM: &str =
    "a foreign TLS peer (Python ssl, openssl s_server/s_client) does not run in the simulator";

crate::only_on! {

    /// Files for one test in a fresh temporary directory, removed on drop.
    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(tag: &str) -> Files {
            let dir = std::env::temp_dir().join(format!("tcpudp-tls-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temporary directory");
            Files { dir }
        }

        fn write(&self, name: &str, contents: &str) -> String {
            let path = self.dir.join(name);
            std::fs::write(&path, contents).expect("write a test file");
            path.to_string_lossy().into_owned()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A child process, killed on drop; its stdout lines arrive through a channel.
    struct Peer {
        child: Child,
        lines: mpsc::Receiver<String>,
        stderr: std::sync::Arc<std::sync::Mutex<String>>,
    }

    impl Peer {
        fn spawn(program: &str, args: &[&str]) -> Result<Peer, TestError> {
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn {program}: {e}"))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut stderr_pipe = child.stderr.take().ok_or("no stderr")?;
            let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr_pipe.read_to_string(&mut text);
                sink.lock().unwrap_or_else(|p| p.into_inner()).push_str(&text);
            });
            Ok(Peer { child, lines, stderr })
        }

        /// The next stdout line, within 30 s.
        async fn line(&mut self, what: &str) -> Result<String, TestError> {
            for _ in 0..3000 {
                match self.lines.try_recv() {
                    Ok(line) => return Ok(line),
                    Err(mpsc::TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return Err(
                            format!("{what}: the peer closed its output; stderr: {}", self.stderr()).into()
                        )
                    }
                }
            }
            Err(format!("hang guard: {what}").into())
        }

        /// The next stdout line starting with `prefix` (others are skipped).
        async fn line_starting(&mut self, prefix: &str) -> Result<String, TestError> {
            for _ in 0..100 {
                let line = self.line(prefix).await?;
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
            Err(format!("no line starting with {prefix:?}").into())
        }

        /// Every remaining stdout line, once the process exited.
        fn rest(&mut self) -> Vec<String> {
            self.lines.try_iter().collect()
        }

        fn send_stdin(&mut self, text: &str) -> Result<(), TestError> {
            let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
            stdin.write_all(text.as_bytes())?;
            stdin.flush()?;
            Ok(())
        }

        /// Waits for the process to exit, within 30 s.
        async fn exit(&mut self) -> Result<ExitStatus, TestError> {
            for _ in 0..3000 {
                if let Some(status) = self.child.try_wait()? {
                    // Let the reader thread pass on the last lines.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Ok(status);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(format!("hang guard: the peer did not exit; stderr: {}", self.stderr()).into())
        }

        fn stderr(&self) -> String {
            self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn have(program: &str) -> bool {
        let found = Command::new(program)
            .arg(if program == "openssl" { "version" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            crate::scenarios::skip(format!("`{program}` is not installed on this machine"));
        }
        found
    }

    fn net() -> Network {
        tcpudp_net_real::network(Policy::allow_all()).expect("real network")
    }

    fn tls() -> TcpOptions {
        TcpOptions { use_secure_transport: true, ..TcpOptions::default() }
    }

    fn tls_server_on_loopback() -> TcpServerOptions {
        TcpServerOptions {
            local_address: Some("127.0.0.1".into()),
            use_secure_transport: true,
            ..TcpServerOptions::default()
        }
    }

    /// A certificate for "localhost" and 127.0.0.1, with a key OpenSSL 3.0 can load.
    fn localhost_leaf(pki: &Pki) -> Leaf {
        pki.leaf_p256(&["localhost", "127.0.0.1"])
    }

    fn cause_of(result: &Result<(), SocketError>) -> Option<Cause> {
        result.as_ref().err().and_then(SocketError::cause)
    }

    /// A Python TLS server: serves one connection (optionally STARTTLS first), echoes until the
    /// client's close_notify (a TCP end without one is an error: `suppress_ragged_eofs=False`), then
    /// answers with its own close_notify. Prints the port, the ALPN and how it ended.
    const PY_SERVER: &str = r#"
import socket, ssl, sys
cert, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2", "http/1.1"])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print("port", srv.getsockname()[1], flush=True)
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(30)
if mode == "starttls":
    got = b""
    while not got.endswith(b"\r\n"):
        got += conn.recv(1)
    assert got == b"STARTTLS\r\n", got
    conn.sendall(b"GO\r\n")
try:
    tls = ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
except ssl.SSLError as e:
    print("handshake failed", e.reason, flush=True)
    sys.exit(0)
print("alpn", tls.selected_alpn_protocol(), flush=True)
while True:
    chunk = tls.recv(4096)
    if not chunk:
        break
    tls.sendall(chunk)
tls.unwrap()
print("clean", flush=True)
conn.close()
"#;

    /// A Python TLS client: connects to 127.0.0.1:port as "localhost", offers ALPN h2, sends "ping",
    /// expects it back, then closes with close_notify and waits for the server's. Prints how it went.
    const PY_CLIENT: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
if len(sys.argv) > 4:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
sock = socket.create_connection(("127.0.0.1", port), timeout=30)
tls = ctx.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)
print("alpn", tls.selected_alpn_protocol(), flush=True)
try:
    tls.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = tls.recv(4 - len(got))
        if not chunk:
            break
        got += chunk
except (ssl.SSLError, ConnectionError) as e:
    print("refused", getattr(e, "reason", e), flush=True)
    sys.exit(0)
print("echo", got.decode(), flush=True)
tls.unwrap()
print("clean", flush=True)
sock.close()
"#;

    /// rule: TCP-CTOR-15, EXT-05
    #[only(Real, IN_SIM)]
    async fn python_ssl_server_and_our_client() -> Result<(), TestError> {
        if !have("python3") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let files = Files::new("py-server");
        let (cert, key) = (files.write("cert.pem", &leaf.cert_pem), files.write("key.pem", &leaf.key_pem));
        let mut peer = Peer::spawn("python3", &["-c", PY_SERVER, &cert, &key, "tls"])?;
        let port: u16 = peer.line_starting("port ").await?[5..].parse()?;

        let net = net();
        net.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).alpn_protocols(["h2"]).build()?);
        let sock = TcpSocket::new(&net, "localhost", port, tls())?;
        within(30, "opened", sock.opened()).await??;
        assert_eq!(sock.alpn().as_deref(), Some(&b"h2"[..]), "ALPN chosen by Python");
        assert_eq!(peer.line_starting("alpn").await?, "alpn h2");
        let writer = sock.writable()?;
        let mut reader = sock.readable()?;
        writer.write(Bytes::from_static(b"hello, python")).await?;
        assert_eq!(read_n(&mut reader, 13).await?, b"hello, python");
        // close_notify then FIN: Python sees a clean end (it refuses ragged EOFs) and answers with
        // its own close_notify, which ends our readable cleanly.
        sock.half_close();
        assert_eq!(within(30, "end", reader.read()).await??, None);
        within(30, "closed", sock.closed()).await??;
        assert_eq!(peer.line_starting("clean").await?, "clean");
        assert!(peer.exit().await?.success(), "python: {}", peer.stderr());
        Ok(())
    }

    /// rule: TCP-CTOR-15, EXT-06
    #[only(Real, IN_SIM)]
    async fn python_ssl_server_with_an_untrusted_certificate() -> Result<(), TestError> {
        if !have("python3") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let stranger = Pki::self_signed_p256(&["localhost"]);
        let files = Files::new("py-untrusted");
        let (cert, key) =
            (files.write("cert.pem", &stranger.cert_pem), files.write("key.pem", &stranger.key_pem));
        let mut peer = Peer::spawn("python3", &["-c", PY_SERVER, &cert, &key, "tls"])?;
        let port: u16 = peer.line_starting("port ").await?[5..].parse()?;

        let net = net();
        net.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).build()?);
        let sock = TcpSocket::new(&net, "localhost", port, tls())?;
        let opened = within(30, "opened", sock.opened()).await?;
        assert_eq!(opened.as_ref().map_err(SocketError::kind), Err(ErrorName::NetworkError));
        assert_eq!(cause_of(&opened), Some(Cause::Tls(TlsCause::UnknownIssuer)));
        // Our alert reached Python's handshake.
        assert!(
            peer.line_starting("handshake failed").await?.contains("UNKNOWN_CA"),
            "python: {}",
            peer.stderr()
        );
        Ok(())
    }

    /// rule: EXT-07
    #[only(Real, IN_SIM)]
    async fn python_starttls_server_and_our_start_tls() -> Result<(), TestError> {
        if !have("python3") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let files = Files::new("py-starttls");
        let (cert, key) = (files.write("cert.pem", &leaf.cert_pem), files.write("key.pem", &leaf.key_pem));
        let mut peer = Peer::spawn("python3", &["-c", PY_SERVER, &cert, &key, "starttls"])?;
        let port: u16 = peer.line_starting("port ").await?[5..].parse()?;

        let net = net();
        net.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).build()?);
        let sock = TcpSocket::new(&net, "localhost", port, TcpOptions::default())?;
        within(30, "opened", sock.opened()).await??;
        let writer = sock.writable()?;
        let mut reader = sock.readable()?;
        writer.write(Bytes::from_static(b"STARTTLS\r\n")).await?;
        assert_eq!(read_n(&mut reader, 4).await?, b"GO\r\n");
        within(30, "start_tls", sock.start_tls()).await??;
        assert_eq!(peer.line_starting("alpn").await?, "alpn None");
        writer.write(Bytes::from_static(b"upgraded")).await?;
        assert_eq!(read_n(&mut reader, 8).await?, b"upgraded");
        sock.half_close();
        assert_eq!(within(30, "end", reader.read()).await??, None);
        within(30, "closed", sock.closed()).await??;
        assert_eq!(peer.line_starting("clean").await?, "clean");
        Ok(())
    }

    /// rule: SRV-CTOR-09, EXT-08
    #[only(Real, IN_SIM)]
    async fn python_ssl_client_and_our_server() -> Result<(), TestError> {
        if !have("python3") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let files = Files::new("py-client");
        let ca = files.write("ca.pem", &pki.ca_pem);

        let net = net();
        net.set_tls(
            TlsContext::builder()
                .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                .alpn_protocols(["http/1.1", "h2"])
                .build()?,
        );
        let server = TcpServerSocket::new(&net, tls_server_on_loopback())?;
        within(30, "server opened", server.opened()).await??;
        let port = server.local_port().ok_or("no port")?;
        let mut peer = Peer::spawn("python3", &["-c", PY_CLIENT, &port.to_string(), &ca])?;
        let conn = within(30, "listen", server.listen()).await??;
        assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]), "the only protocol Python offers");
        let mut reader = conn.readable()?;
        let writer = conn.writable()?;
        while let Some(chunk) = within(30, "read", reader.read()).await?? {
            drop(writer.write(chunk));
        }
        within(30, "closed", conn.closed()).await??;
        assert_eq!(peer.line_starting("alpn").await?, "alpn h2");
        assert_eq!(peer.line_starting("echo").await?, "echo ping");
        assert_eq!(peer.line_starting("clean").await?, "clean", "Python got our close_notify");
        assert!(peer.exit().await?.success(), "python: {}", peer.stderr());
        Ok(())
    }

    /// rule: SRV-CTOR-09, EXT-08, SRV-CONNFAIL-01
    #[only(Real, IN_SIM)]
    async fn python_ssl_client_certificates() -> Result<(), TestError> {
        if !have("python3") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let client = pki.leaf_p256(&[]);
        let files = Files::new("py-mtls");
        let ca = files.write("ca.pem", &pki.ca_pem);
        let (client_cert, client_key) =
            (files.write("client.pem", &client.cert_pem), files.write("client-key.pem", &client.key_pem));

        let net = net();
        net.set_tls(
            TlsContext::builder()
                .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                .client_auth_roots_pem(&pki.ca_pem, true)
                .build()?,
        );
        let server = TcpServerSocket::new(&net, tls_server_on_loopback())?;
        within(30, "server opened", server.opened()).await??;
        let port = server.local_port().ok_or("no port")?.to_string();

        // Without a certificate: our listen() rejects, Python's first read fails.
        let pending = server.listen();
        let mut peer = Peer::spawn("python3", &["-c", PY_CLIENT, &port, &ca])?;
        let refused = within(30, "listen", pending).await?;
        let e = refused.err().ok_or("a client without a certificate was served")?;
        assert_eq!(
            (e.kind(), e.cause()),
            (ErrorName::NetworkError, Some(Cause::Tls(TlsCause::ClientCertificate)))
        );
        // Python's read fails (its reason is normally TLSV13_ALERT_CERTIFICATE_REQUIRED).
        let refusal = peer.line_starting("refused").await?;
        println!("python without a certificate: {refusal}");
        drop(peer);

        // With one: served.
        let mut peer = Peer::spawn("python3", &["-c", PY_CLIENT, &port, &ca, &client_cert, &client_key])?;
        let conn = within(30, "listen", server.listen()).await??;
        let mut reader = conn.readable()?;
        let writer = conn.writable()?;
        while let Some(chunk) = within(30, "read", reader.read()).await?? {
            drop(writer.write(chunk));
        }
        assert_eq!(peer.line_starting("echo").await?, "echo ping");
        assert!(peer.exit().await?.success(), "python: {}", peer.stderr());
        Ok(())
    }

    /// rule: TCP-CTOR-15, EXT-05
    #[only(Real, IN_SIM)]
    async fn openssl_s_server_and_our_client() -> Result<(), TestError> {
        if !have("openssl") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let files = Files::new("s-server");
        let (cert, key) = (files.write("cert.pem", &leaf.cert_pem), files.write("key.pem", &leaf.key_pem));
        // -rev: each line comes back reversed.
        let mut peer = Peer::spawn(
            "openssl",
            &[
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-cert",
                &cert,
                "-key",
                &key,
                "-naccept",
                "1",
                "-rev",
                "-alpn",
                "h2",
            ],
        )?;
        let accept = peer.line_starting("ACCEPT").await?;
        let port: u16 = accept.rsplit(':').next().ok_or("no port")?.parse()?;

        let net = net();
        net.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).alpn_protocols(["h2"]).build()?);
        // An IP literal: checked against the certificate's IP-address SAN.
        let sock = TcpSocket::new(&net, "127.0.0.1", port, tls())?;
        within(30, "opened", sock.opened()).await??;
        assert_eq!(sock.alpn().as_deref(), Some(&b"h2"[..]));
        sock.writable()?.write(Bytes::from_static(b"hello openssl\n")).await?;
        let mut reader = sock.readable()?;
        assert_eq!(read_n(&mut reader, 14).await?, b"lssnepo olleh\n");
        sock.reset();
        Ok(())
    }

    /// rule: SRV-CTOR-09, EXT-08
    #[only(Real, IN_SIM)]
    async fn openssl_s_client_and_our_server() -> Result<(), TestError> {
        if !have("openssl") {
            return Ok(());
        }
        let pki = Pki::new("tcpudp interop CA");
        let leaf = localhost_leaf(&pki);
        let files = Files::new("s-client");
        let ca = files.write("ca.pem", &pki.ca_pem);

        let net = net();
        net.set_tls(
            TlsContext::builder()
                .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                .alpn_protocols(["h2"])
                .build()?,
        );
        let server = TcpServerSocket::new(&net, tls_server_on_loopback())?;
        within(30, "server opened", server.opened()).await??;
        let connect = format!("127.0.0.1:{}", server.local_port().ok_or("no port")?);
        let mut peer = Peer::spawn(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-servername",
                "localhost",
                "-alpn",
                "h2",
                "-quiet",
            ],
        )?;
        peer.send_stdin("hello from s_client\n")?;
        let conn = within(30, "listen", server.listen()).await??;
        assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
        let mut reader = conn.readable()?;
        let got = read_n(&mut reader, 20).await?;
        assert_eq!(got, b"hello from s_client\n");
        conn.writable()?.write(Bytes::from(got)).await?;
        // close(): close_notify then FIN; s_client ends when it reads them.
        let _ = within(30, "close", conn.close()).await?;
        let status = peer.exit().await?;
        let out = peer.rest();
        assert!(status.success(), "s_client: {status}; stdout {out:?}; stderr {}", peer.stderr());
        assert!(out.iter().any(|l| l == "hello from s_client"), "s_client printed the echo: {out:?}");
        Ok(())
    }
}
