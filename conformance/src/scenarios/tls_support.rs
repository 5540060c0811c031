//! Helpers for `tls.rs` and `tls_interop.rs`: a test PKI generated at test time
//! (rcgen, Ed25519: deterministic signatures in simulation; nothing secret is committed), raw TCP
//! peers the library did not write, and a bare rustls session over them (for peers that misbehave
//! on purpose, such as one that ends without close_notify).

use std::future::Future;
use std::io;
use std::time::Duration;

use crate::{BackendChoice, Ctx};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tcpudp::{SocketError, TcpReadable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A boxed error for world bodies.
pub type TestError = Box<dyn std::error::Error>;

/// A certificate authority made for one test run.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Vec<u8>,
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key (PKCS#8), PEM.
    pub key_pem: String,
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
    /// Private key (PKCS#8), DER.
    pub key_der: Vec<u8>,
}

fn ed25519() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key")
}

/// ECDSA P-256 keys for peers built on OpenSSL 3.0, which cannot load ring's Ed25519 PKCS#8 v2
/// private keys (their signatures in the chain are fine).
fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = ed25519();
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        Pki { ca_pem: ca.pem(), ca_der: ca.der().to_vec(), ca, ca_key }
    }

    /// A certificate for `sans` (DNS names or IP literals) issued by this CA.
    pub fn leaf(&self, sans: &[&str]) -> Leaf {
        self.leaf_with(sans, |_| {})
    }

    /// As [`leaf`](Self::leaf), with an ECDSA P-256 key (for OpenSSL-based peers).
    pub fn leaf_p256(&self, sans: &[&str]) -> Leaf {
        self.issue(sans, p256(), |_| {})
    }

    /// As [`leaf`](Self::leaf), with the parameters edited first (validity, …).
    pub fn leaf_with(&self, sans: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        self.issue(sans, ed25519(), edit)
    }

    fn issue(&self, sans: &[&str], key: KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, sans.first().copied().unwrap_or("client"));
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// A self-signed certificate for `sans` (no CA vouches for it).
    pub fn self_signed(sans: &[&str]) -> Leaf {
        Self::self_signed_with(sans, ed25519())
    }

    /// As [`self_signed`](Self::self_signed), with an ECDSA P-256 key (for OpenSSL-based peers).
    pub fn self_signed_p256(sans: &[&str]) -> Leaf {
        Self::self_signed_with(sans, p256())
    }

    fn self_signed_with(sans: &[&str], key: KeyPair) -> Leaf {
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

/// Awaits `fut` with a hang guard of `secs` seconds (tokio time: simulated in the simulator).
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> Result<F::Output, TestError> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| format!("hang guard: {what} did not finish within {secs} s").into())
}

/// Reads until `n` bytes arrived or the stream ended.
pub async fn read_n(reader: &mut TcpReadable, n: usize) -> Result<Vec<u8>, SocketError> {
    let mut got = Vec::new();
    while got.len() < n {
        match reader.read().await? {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(got)
}

/// A byte stream of a raw peer.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> RawStream for T {}

/// A listening socket the library did not make: tokio on real loopback, turmoil in simulation.
pub enum RawListener {
    /// tokio on 127.0.0.1.
    Real(tokio::net::TcpListener),
    /// turmoil on this host.
    Sim(turmoil::net::TcpListener),
}

impl RawListener {
    /// Binds port 0 (real) or `sim_port` (simulation) and returns the listener and its port.
    pub async fn bind(ctx: &Ctx, sim_port: u16) -> io::Result<(RawListener, u16)> {
        match ctx.backend() {
            BackendChoice::Real => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let port = l.local_addr()?.port();
                Ok((RawListener::Real(l), port))
            }
            BackendChoice::Sim => {
                let l = turmoil::net::TcpListener::bind(("0.0.0.0", sim_port)).await?;
                Ok((RawListener::Sim(l), sim_port))
            }
        }
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Box<dyn RawStream>> {
        match self {
            RawListener::Real(l) => Ok(Box::new(l.accept().await?.0)),
            RawListener::Sim(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// Connects a raw stream to `host:port`.
pub async fn raw_connect(ctx: &Ctx, host: &str, port: u16) -> io::Result<Box<dyn RawStream>> {
    match ctx.backend() {
        BackendChoice::Real => Ok(Box::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?)),
        BackendChoice::Sim => Ok(Box::new(turmoil::net::TcpStream::connect((host, port)).await?)),
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A bare rustls session over a raw stream (a TLS peer whose every move the test controls).
pub struct RawTls {
    /// The rustls connection.
    pub conn: rustls::Connection,
    /// The stream.
    pub stream: Box<dyn RawStream>,
}

impl RawTls {
    /// The server side of a handshake with credentials `leaf`.
    pub async fn accept(stream: Box<dyn RawStream>, leaf: &Leaf) -> io::Result<RawTls> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf.key_der.clone()).map_err(other)?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der.clone().into()], key)
            .map_err(other)?;
        let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).map_err(other)?;
        let mut tls = RawTls { conn: rustls::Connection::Server(conn), stream };
        tls.handshake().await?;
        Ok(tls)
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = Vec::new();
            self.conn.write_tls(&mut out)?;
            self.stream.write_all(&out).await?;
        }
        self.stream.flush().await
    }

    async fn handshake(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.flush().await?;
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                self.conn.read_tls(&mut input)?;
                self.conn.process_new_packets().map_err(other)?;
            }
        }
    }

    /// Sends `data` as application data.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.conn.writer(), data)?;
        self.flush().await
    }

    /// Reads application data until `n` bytes arrived.
    pub async fn recv(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while got.len() < n {
            let mut plain = [0u8; 4096];
            match io::Read::read(&mut self.conn.reader(), &mut plain) {
                Ok(0) => break,
                Ok(k) => {
                    got.extend_from_slice(&plain[..k]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let k = self.stream.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            let mut input = &buf[..k];
            while !input.is_empty() {
                self.conn.read_tls(&mut input)?;
                self.conn.process_new_packets().map_err(other)?;
            }
        }
        Ok(got)
    }

    /// Sends FIN without close_notify: a truncation.
    pub async fn cut(mut self) -> io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }
}
