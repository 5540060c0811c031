//! TLS (`useSecureTransport`, `start_tls()`): read RULES.md TCP-CTOR-15, SRV-CTOR-09, EXT-05 to
//! EXT-08, AMB-44 and AMB-49, and DESIGN §3.4 and §7, before editing.
//!
//! TLS is one transport layer written once for both backends: [`TlsTransport`] wraps any
//! [`TcpTransport`] (real or simulated) and is itself a `TcpTransport` — `poll_read` decrypts,
//! `poll_write` encrypts, `poll_shutdown` sends close_notify before the FIN — plus a
//! `poll_handshake`. The socket driver (`src/tcp.rs`) wraps its transport when the core asks for
//! `IoCommand::TlsHandshake` and reports `TlsDone`/`TlsFailed`; the server (`src/server.rs`) runs
//! each accepted connection's handshake before it reports the connection (EXT-08).
//!
//! Settings come from the library context, the [`Network`]: [`TlsContext`] (trust roots, server
//! and client credentials, ALPN, SNI override, server handshake timeout), set with
//! [`Network::set_tls`]. Configurations are always built with an explicit crypto provider: ring's
//! on the real backend (the OS's randomness), and in simulation a seeded provider whose secure
//! random and X25519 key exchange draw from a per-connection stream derived from the context's
//! seed (`hash(seed, "tls", role, local, peer, n)`, DESIGN §7), with tickets and resumption off
//! and certificate validity checked against the simulation's clock, so a TLS scenario repeats
//! byte for byte. Signatures are deterministic only with Ed25519 (and RSA PKCS#1, which TLS 1.3
//! does not use): ECDSA and RSA-PSS signing draw from ring's own generator, so use Ed25519
//! credentials in simulation when the ciphertext must repeat.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use rustls::client::Resumption;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection, NamedGroup,
    PeerMisbehaved, RootCertStore, ServerConfig, ServerConnection,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tcpudp_core::{Cause, ConnId, IoEvent, SocketError, TlsCause};
use tokio::io::ReadBuf;

use crate::backend::{BackendKind, TcpDiag, TcpTransport};
use crate::network::Network;
use crate::shared::{lock, Mutex};

/// How long a server waits for an accepted connection's handshake by default (EXT-08).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The wall-clock time the simulation starts at by default (2025-01-01T00:00:00Z): certificate
/// validity is checked against it plus the simulated time elapsed.
pub const DEFAULT_SIM_EPOCH_SECS: u64 = 1_735_689_600;

/// Handshakes a TLS server runs at once; further connections wait in the OS backlog.
const MAX_SERVER_HANDSHAKES: usize = 64;

/// Largest plaintext handed to rustls per write.
const MAX_PLAINTEXT_WRITE: usize = 64 * 1024;

/// Largest plaintext window per read (rustls records hold at most 16 KiB).
const PLAINTEXT_WINDOW: usize = 32 * 1024;

/// Steps one poll may take before yielding.
const TLS_STEPS: usize = 32;

// ---- the library context -------------------------------------------------------------------

/// The library context's TLS settings (AMB-44): trust roots, credentials, ALPN and timeouts.
///
/// Every [`Network`] has one ([`Network::set_tls`]); without one it uses [`TlsContext::default`]:
/// the `webpki-roots` (Mozilla) trust roots, no client certificate, no server credentials (a TLS
/// server then fails with `NotSupportedError`, SRV-CTOR-09). Cheap to clone.
///
/// ```
/// # fn demo(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), tcpudp::SocketError> {
/// use tcpudp::TlsContext;
/// let tls = TlsContext::builder()
///     .root_certificates_pem(ca_pem) // replaces the webpki roots
///     .server_credentials_pem(cert_pem, key_pem)
///     .alpn_protocols(["h2", "http/1.1"])
///     .build()?;
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    enabled: bool,
    material: Material,
    /// The real backend's configurations (ring provider, OS time), built and checked eagerly.
    real: Arc<Configs>,
}

#[derive(Clone)]
struct Material {
    roots: Arc<RootCertStore>,
    client_identity: Option<Identity>,
    server_identity: Option<Identity>,
    client_auth: Option<(Arc<RootCertStore>, bool)>,
    alpn: Vec<Vec<u8>>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
    sim_seed: u64,
    sim_epoch: SystemTime,
}

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

struct Configs {
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
}

impl TlsContext {
    /// A builder starting from the defaults (webpki roots, no credentials, no ALPN).
    pub fn builder() -> TlsContextBuilder {
        TlsContextBuilder::default()
    }

    /// A context in which TLS is unavailable, as in a build without TLS: `useSecureTransport`
    /// makes the constructors throw `NotSupportedError` (TCP-CTOR-15, SRV-CTOR-09).
    pub fn disabled() -> TlsContext {
        let default = TlsContext::default();
        TlsContext {
            inner: Arc::new(ContextInner {
                enabled: false,
                material: default.inner.material.clone(),
                real: default.inner.real.clone(),
            }),
        }
    }

    /// Whether TLS can be used at all with this context.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Whether server credentials are configured (a TLS server can be made, SRV-CTOR-09).
    pub fn has_server_credentials(&self) -> bool {
        self.inner.enabled && self.inner.material.server_identity.is_some()
    }

    /// The server-side handshake timeout (EXT-08), also bounding `start_tls()`.
    pub fn handshake_timeout(&self) -> Duration {
        self.inner.material.handshake_timeout
    }
}

impl Default for TlsContext {
    /// The webpki-roots trust roots, nothing else.
    fn default() -> Self {
        static DEFAULT: OnceLock<TlsContext> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // Invariant: the defaults hold no credentials, so building cannot fail.
                TlsContextBuilder::default().build().expect("the default TLS context builds")
            })
            .clone()
    }
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.inner.material;
        f.debug_struct("TlsContext")
            .field("enabled", &self.inner.enabled)
            .field("roots", &m.roots.len())
            .field("client_certificate", &m.client_identity.is_some())
            .field("server_credentials", &m.server_identity.is_some())
            .field("client_auth", &m.client_auth.as_ref().map(|(_, required)| *required))
            .field("alpn", &m.alpn)
            .field("server_name", &m.server_name)
            .field("handshake_timeout", &m.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TlsContext`]. Certificates and keys are DER bytes or PEM text; errors are reported
/// by [`build`](Self::build).
#[derive(Default)]
pub struct TlsContextBuilder {
    roots: Option<Vec<Vec<u8>>>,
    roots_pem: Vec<String>,
    client_identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    client_identity_pem: Option<(String, String)>,
    server_identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    server_identity_pem: Option<(String, String)>,
    client_auth: Option<(Vec<Vec<u8>>, bool)>,
    client_auth_pem: Option<(String, bool)>,
    alpn: Vec<Vec<u8>>,
    server_name: Option<String>,
    handshake_timeout: Option<Duration>,
    sim_seed: u64,
    sim_epoch: Option<SystemTime>,
}

impl TlsContextBuilder {
    /// Trust exactly these root certificates (DER) instead of the webpki roots.
    pub fn root_certificates_der<C: Into<Vec<u8>>>(mut self, certs: impl IntoIterator<Item = C>) -> Self {
        self.roots.get_or_insert_with(Vec::new).extend(certs.into_iter().map(Into::into));
        self
    }

    /// Trust exactly the root certificates in this PEM text instead of the webpki roots.
    pub fn root_certificates_pem(mut self, pem: &str) -> Self {
        self.roots.get_or_insert_with(Vec::new);
        self.roots_pem.push(pem.to_owned());
        self
    }

    /// The certificate chain (leaf first, DER) and private key (PKCS#8, SEC1 or PKCS#1 DER) TLS
    /// servers present.
    pub fn server_credentials_der(mut self, chain: Vec<Vec<u8>>, key: Vec<u8>) -> Self {
        self.server_identity = Some((chain, key));
        self
    }

    /// As [`server_credentials_der`](Self::server_credentials_der), from PEM text.
    pub fn server_credentials_pem(mut self, chain_pem: &str, key_pem: &str) -> Self {
        self.server_identity_pem = Some((chain_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// A client certificate chain and key, presented when a server asks for one.
    pub fn client_credentials_der(mut self, chain: Vec<Vec<u8>>, key: Vec<u8>) -> Self {
        self.client_identity = Some((chain, key));
        self
    }

    /// As [`client_credentials_der`](Self::client_credentials_der), from PEM text.
    pub fn client_credentials_pem(mut self, chain_pem: &str, key_pem: &str) -> Self {
        self.client_identity_pem = Some((chain_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// TLS servers ask clients for a certificate issued by one of these roots (DER); with
    /// `required`, a client without one fails its handshake (`TlsCause::ClientCertificate`).
    pub fn client_auth_roots_der<C: Into<Vec<u8>>>(
        mut self,
        roots: impl IntoIterator<Item = C>,
        required: bool,
    ) -> Self {
        self.client_auth = Some((roots.into_iter().map(Into::into).collect(), required));
        self
    }

    /// As [`client_auth_roots_der`](Self::client_auth_roots_der), from PEM text.
    pub fn client_auth_roots_pem(mut self, pem: &str, required: bool) -> Self {
        self.client_auth_pem = Some((pem.to_owned(), required));
        self
    }

    /// ALPN protocols: offered by clients in this order, chosen by servers in this order. The
    /// negotiated one is [`TcpSocket::alpn`](crate::TcpSocket::alpn).
    pub fn alpn_protocols<P: AsRef<[u8]>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        self.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// The name clients send as SNI and verify the certificate against, instead of the
    /// `remoteAddress` (a DNS name, or an IP literal for an IP-address SAN).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_owned());
        self
    }

    /// How long a TLS server waits for each accepted connection's handshake (default 10 s,
    /// EXT-08), and how long `start_tls()` may take. Client handshakes while opening are bounded
    /// by the connect timeout instead (AMB-49).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Simulation only: the seed every TLS session's randomness derives from (use the
    /// simulation's seed). Default 0. The real backend always uses the OS's randomness.
    pub fn sim_seed(mut self, seed: u64) -> Self {
        self.sim_seed = seed;
        self
    }

    /// Simulation only: the wall-clock time at the start of the simulation (certificates are
    /// checked against it plus the simulated time elapsed). Default 2025-01-01T00:00:00Z.
    pub fn sim_epoch(mut self, epoch: SystemTime) -> Self {
        self.sim_epoch = Some(epoch);
        self
    }

    /// Checks every certificate and key and builds the context.
    ///
    /// # Errors
    ///
    /// `TypeError` naming what could not be parsed or used.
    pub fn build(self) -> Result<TlsContext, SocketError> {
        let roots = match self.roots {
            None => Arc::new(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
            Some(ders) => {
                let mut certs = ders.into_iter().map(CertificateDer::from).collect::<Vec<_>>();
                for pem in &self.roots_pem {
                    certs.extend(parse_pem_certs(pem, "root certificates")?);
                }
                Arc::new(root_store(certs, "root certificates")?)
            }
        };
        let client_identity = identity(self.client_identity, self.client_identity_pem, "client credentials")?;
        let server_identity = identity(self.server_identity, self.server_identity_pem, "server credentials")?;
        let client_auth = match (self.client_auth, self.client_auth_pem) {
            (_, Some((pem, required))) => Some((
                Arc::new(root_store(parse_pem_certs(&pem, "client auth roots")?, "client auth roots")?),
                required,
            )),
            (Some((ders, required)), None) => Some((
                Arc::new(root_store(
                    ders.into_iter().map(CertificateDer::from).collect(),
                    "client auth roots",
                )?),
                required,
            )),
            (None, None) => None,
        };
        let server_name = match self.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                config_error(format!("server name {name:?} is not a DNS name or IP address"))
            })?),
            None => None,
        };
        let material = Material {
            roots,
            client_identity,
            server_identity,
            client_auth,
            alpn: self.alpn,
            server_name,
            handshake_timeout: self.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            sim_seed: self.sim_seed,
            sim_epoch: self.sim_epoch.unwrap_or(UNIX_EPOCH + Duration::from_secs(DEFAULT_SIM_EPOCH_SECS)),
        };
        let real = build_configs(&material, real_provider(), Arc::new(DefaultTimeProvider), false)
            .map_err(|e| config_error(format!("TLS configuration: {e}")))?;
        // The simulator's configurations differ only in provider and clock: check them now too.
        let sim_clock = Arc::new(SimClock { base: tokio::time::Instant::now(), wall: material.sim_epoch });
        build_configs(&material, sim_provider(), sim_clock, true)
            .map_err(|e| config_error(format!("TLS configuration (simulation): {e}")))?;
        Ok(TlsContext { inner: Arc::new(ContextInner { enabled: true, material, real: Arc::new(real) }) })
    }
}

fn config_error(message: String) -> SocketError {
    SocketError::type_error().with_message(message)
}

fn parse_pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, SocketError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!("{what}: no CERTIFICATE in the PEM text")));
    }
    Ok(certs)
}

fn root_store(certs: Vec<CertificateDer<'static>>, what: &str) -> Result<RootCertStore, SocketError> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| config_error(format!("{what}: {e}")))?;
    }
    Ok(store)
}

fn identity(
    der: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    pem: Option<(String, String)>,
    what: &str,
) -> Result<Option<Identity>, SocketError> {
    match (der, pem) {
        (_, Some((chain, key))) => {
            let chain = parse_pem_certs(&chain, what)?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| config_error(format!("{what}: bad private key PEM: {e}")))?;
            Ok(Some(Identity { chain, key }))
        }
        (Some((chain, key)), None) => {
            if chain.is_empty() {
                return Err(config_error(format!("{what}: empty certificate chain")));
            }
            let key = PrivateKeyDer::try_from(key).map_err(|e| config_error(format!("{what}: {e}")))?;
            Ok(Some(Identity { chain: chain.into_iter().map(CertificateDer::from).collect(), key }))
        }
        (None, None) => Ok(None),
    }
}

fn real_provider() -> Arc<CryptoProvider> {
    static REAL: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    REAL.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn build_configs(
    m: &Material,
    provider: Arc<CryptoProvider>,
    time: Arc<dyn TimeProvider>,
    sim: bool,
) -> Result<Configs, rustls::Error> {
    let builder = ClientConfig::builder_with_details(provider.clone(), time.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(m.roots.clone());
    let mut client = match &m.client_identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = m.alpn.clone();
    if sim {
        client.resumption = Resumption::disabled();
    }
    let server = match &m.server_identity {
        None => None,
        Some(id) => {
            let builder = ServerConfig::builder_with_details(provider.clone(), time)
                .with_safe_default_protocol_versions()?;
            let builder = match &m.client_auth {
                Some((roots, required)) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider);
                    let verifier = if *required { verifier } else { verifier.allow_unauthenticated() };
                    let verifier = verifier.build().map_err(|e| rustls::Error::General(e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut server = builder.with_single_cert(id.chain.clone(), id.key.clone_key())?;
            server.alpn_protocols = m.alpn.clone();
            if sim {
                server.send_tls13_tickets = 0;
                server.session_storage = Arc::new(NoServerSessionStorage {});
            }
            Some(Arc::new(server))
        }
    };
    Ok(Configs { client: Arc::new(client), server })
}

// ---- per network -----------------------------------------------------------------------------

/// A network's TLS state: its context, the simulator's configurations built for it (on its
/// clock), and the count of sessions (which names each session's random stream).
pub(crate) struct NetTls {
    state: Mutex<NetTlsState>,
    epoch: tokio::time::Instant,
    sessions: AtomicU64,
}

#[derive(Default)]
struct NetTlsState {
    ctx: Option<TlsContext>,
    sim: Option<Arc<Configs>>,
}

impl NetTls {
    /// The TLS state of a network whose clock started at `epoch`.
    pub(crate) fn new(epoch: tokio::time::Instant) -> Self {
        NetTls { state: Mutex::new(NetTlsState::default()), epoch, sessions: AtomicU64::new(0) }
    }

    pub(crate) fn set(&self, ctx: TlsContext) {
        let mut state = lock(&self.state);
        state.ctx = Some(ctx);
        state.sim = None;
    }

    pub(crate) fn context(&self) -> TlsContext {
        lock(&self.state).ctx.clone().unwrap_or_default()
    }

    /// TCP-CTOR-15: this library has TLS unless the context disables it.
    pub(crate) fn client_supported(&self) -> bool {
        self.context().enabled()
    }

    /// SRV-CTOR-09: TLS and server credentials.
    pub(crate) fn server_configured(&self) -> bool {
        self.context().has_server_credentials()
    }

    fn configs(&self, sim: bool) -> Result<(TlsContext, Arc<Configs>), TlsCause> {
        let mut state = lock(&self.state);
        let ctx = state.ctx.clone().unwrap_or_default();
        if !sim {
            let real = ctx.inner.real.clone();
            return Ok((ctx, real));
        }
        if let Some(sim) = &state.sim {
            return Ok((ctx, sim.clone()));
        }
        let m = &ctx.inner.material;
        let clock = Arc::new(SimClock { base: self.epoch, wall: m.sim_epoch });
        let built = build_configs(m, sim_provider(), clock, true).map_err(|e| {
            tracing::debug!(error = %e, "TLS configuration for the simulator failed");
            TlsCause::Protocol
        })?;
        let built = Arc::new(built);
        state.sim = Some(built.clone());
        Ok((ctx, built))
    }
}

// ---- the simulator's seeded crypto provider ----------------------------------------------------

/// The simulation's clock as wall time: the context's epoch plus the simulated time since the
/// network started (turmoil drives tokio's clock).
#[derive(Debug)]
struct SimClock {
    base: tokio::time::Instant,
    wall: SystemTime,
}

impl TimeProvider for SimClock {
    fn current_time(&self) -> Option<UnixTime> {
        let now = self.wall + tokio::time::Instant::now().saturating_duration_since(self.base);
        Some(UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).ok()?))
    }
}

/// ring's provider with the secure random and the key exchange replaced by ones that draw from
/// the current session's seeded stream.
fn sim_provider() -> Arc<CryptoProvider> {
    static SIM: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    SIM.get_or_init(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.secure_random = &SimRandom;
        provider.kx_groups = vec![&SimX25519];
        Arc::new(provider)
    })
    .clone()
}

/// A deterministic random bit generator: SHA-256 of the key and a block counter. Only for
/// simulations, where repeatability is the point and secrecy is not.
#[derive(Clone)]
struct Drbg {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl Drbg {
    fn from_parts(parts: &[&[u8]]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        Drbg { key, counter: 0, block: [0; 32], used: 32 }
    }

    /// The stream of one session: `hash(seed, "tls", role, local, peer, n)` (DESIGN §7).
    fn for_session(
        seed: u64,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        n: u64,
    ) -> Self {
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        Drbg::from_parts(&[
            &seed.to_le_bytes(),
            b"tls",
            role.as_str().as_bytes(),
            addr(local).as_bytes(),
            addr(peer).as_bytes(),
            &n.to_le_bytes(),
        ])
    }

    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == self.block.len() {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                ctx.update(&self.key);
                ctx.update(&self.counter.to_le_bytes());
                self.block.copy_from_slice(ctx.finish().as_ref());
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }
}

thread_local! {
    /// The stream of the session rustls is working for right now on this thread (simulation).
    static SIM_STREAM: Cell<Option<Drbg>> = const { Cell::new(None) };
}

/// Runs `f` (a call into rustls) with `rng` as the thread's current stream, when there is one.
fn with_stream<R>(rng: &mut Option<Drbg>, f: impl FnOnce() -> R) -> R {
    let Some(stream) = rng.take() else { return f() };
    let previous = SIM_STREAM.with(|s| s.replace(Some(stream)));
    let out = f();
    *rng = SIM_STREAM.with(|s| s.replace(previous));
    out
}

#[derive(Debug)]
struct SimRandom;

impl SecureRandom for SimRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        SIM_STREAM.with(|slot| {
            // No stream means rustls drew randomness outside a session call: refuse rather than
            // be silently non-deterministic.
            let mut stream = slot.take().ok_or(GetRandomFailed)?;
            stream.fill(buf);
            slot.set(Some(stream));
            Ok(())
        })
    }
}

/// X25519 whose ephemeral secret comes from the session's stream.
#[derive(Debug)]
struct SimX25519;

impl SupportedKxGroup for SimX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut secret = [0u8; 32];
        SimRandom.fill(&mut secret).map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(SimX25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct SimX25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl ActiveKeyExchange for SimX25519Exchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] =
            peer_pub_key.try_into().map_err(|_| rustls::Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

// ---- errors ----------------------------------------------------------------------------------

/// Which side of the handshake this end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// An I/O error the TLS layer made, carrying the core's cause (read with [`io_cause`]).
#[derive(Debug)]
struct TlsIoError {
    cause: Cause,
    detail: String,
}

impl fmt::Display for TlsIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause, self.detail)
    }
}

impl std::error::Error for TlsIoError {}

fn tls_io(cause: Cause, detail: impl Into<String>) -> io::Error {
    io::Error::other(TlsIoError { cause, detail: detail.into() })
}

/// The core's cause of a transport error, TLS ones included (`Cause::Tls`, `Cause::Truncated`).
pub(crate) fn io_cause(err: &io::Error) -> Cause {
    match err.get_ref().and_then(|inner| inner.downcast_ref::<TlsIoError>()) {
        Some(tls) => tls.cause,
        None => crate::backend::cause_of(err),
    }
}

/// Which TLS check a rustls error is, from this end's point of view.
fn tls_cause(err: &rustls::Error, role: Role) -> TlsCause {
    use rustls::Error as E;
    match (err, role) {
        (E::InvalidCertificate(cert), Role::Client) => match cert {
            CertificateError::UnknownIssuer => TlsCause::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsCause::NameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsCause::Expired,
            _ => TlsCause::Protocol,
        },
        // The server judges the client's certificate.
        (E::InvalidCertificate(_) | E::NoCertificatesPresented, Role::Server) => TlsCause::ClientCertificate,
        // A server only complains about certificates the client sent.
        (
            E::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
            ),
            Role::Client,
        ) => TlsCause::ClientCertificate,
        // The client rejected this server's certificate.
        (E::AlertReceived(AlertDescription::UnknownCA), Role::Server) => TlsCause::UnknownIssuer,
        (E::AlertReceived(AlertDescription::CertificateExpired), Role::Server) => TlsCause::Expired,
        _ => TlsCause::Protocol,
    }
}

/// Why a handshake did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// A TLS check or the TLS protocol.
    Tls(TlsCause),
    /// The transport underneath (reset, link down…).
    Io(Cause),
}

impl Failure {
    fn of(err: &io::Error) -> Failure {
        match io_cause(err) {
            Cause::Tls(cause) => Failure::Tls(cause),
            other => Failure::Io(other),
        }
    }

    fn event(self) -> IoEvent {
        match self {
            Failure::Tls(cause) => IoEvent::TlsFailed { cause },
            Failure::Io(cause) => IoEvent::Failed { cause },
        }
    }

    fn cause(self) -> Cause {
        match self {
            Failure::Tls(cause) => Cause::Tls(cause),
            Failure::Io(cause) => cause,
        }
    }
}

// ---- the transport ---------------------------------------------------------------------------

/// A TLS session over any [`TcpTransport`].
pub(crate) struct TlsTransport {
    inner: Box<dyn TcpTransport>,
    conn: Connection,
    role: Role,
    /// The session's random stream (simulation only).
    rng: Option<Drbg>,
    /// Bytes received before the session started (`start_tls()`), fed to rustls first.
    prefix: VecDeque<Bytes>,
    /// Plaintext rustls took whose records are not all handed to the transport yet: reported
    /// as written once they are, so a `Wrote` means the bytes left this layer.
    taken: Option<usize>,
    close_notify_sent: bool,
    deadline: Option<HandshakeDeadline>,
}

struct HandshakeDeadline {
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TlsTransport {
    /// Starts a session over `inner`. `timeout` bounds the handshake (servers, `start_tls()`).
    fn start(
        net: &Network,
        inner: Box<dyn TcpTransport>,
        role: Role,
        remote_address: &str,
        prefix: Vec<Bytes>,
        timeout: bool,
    ) -> Result<TlsTransport, (Box<dyn TcpTransport>, TlsCause)> {
        let sim = net.backend_kind() == BackendKind::Sim;
        let (ctx, configs) = match net.tls().configs(sim) {
            Ok(c) => c,
            Err(cause) => return Err((inner, cause)),
        };
        let m = &ctx.inner.material;
        let n = net.tls().sessions.fetch_add(1, Ordering::Relaxed);
        let mut rng = sim
            .then(|| Drbg::for_session(m.sim_seed, role, inner.local_addr().ok(), inner.peer_addr().ok(), n));
        let conn = match role {
            Role::Client => {
                let name = match &m.server_name {
                    Some(name) => Ok(name.clone()),
                    None => ServerName::try_from(remote_address.to_owned()).map_err(|e| e.to_string()),
                };
                name.and_then(|name| {
                    with_stream(&mut rng, || ClientConnection::new(configs.client.clone(), name))
                        .map(Connection::Client)
                        .map_err(|e| e.to_string())
                })
            }
            Role::Server => match &configs.server {
                Some(config) => with_stream(&mut rng, || ServerConnection::new(config.clone()))
                    .map(Connection::Server)
                    .map_err(|e| e.to_string()),
                None => Err("no server credentials in the TLS context".to_owned()),
            },
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "TLS session could not start");
                return Err((inner, TlsCause::Protocol));
            }
        };
        let deadline = timeout.then(|| HandshakeDeadline {
            at: tokio::time::Instant::now() + m.handshake_timeout,
            sleep: None,
        });
        Ok(TlsTransport {
            inner,
            conn,
            role,
            rng,
            prefix: prefix.into(),
            taken: None,
            close_notify_sent: false,
            deadline,
        })
    }

    /// Drives the handshake: `Ok(alpn)` once it is done and its last flight is handed to the
    /// transport.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, Failure>> {
        if self.deadline_passed(cx) {
            return Poll::Ready(Err(Failure::Tls(TlsCause::HandshakeTimeout)));
        }
        for _ in 0..TLS_STEPS {
            let flushed = match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::of(&e))),
                Poll::Pending => false,
            };
            if !self.conn.is_handshaking() {
                if !flushed {
                    return Poll::Pending;
                }
                self.deadline = None;
                return Poll::Ready(Ok(self.conn.alpn_protocol().map(<[u8]>::to_vec)));
            }
            match self.poll_read_tls(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::of(&e))),
                Poll::Ready(Ok(0)) if self.conn.is_handshaking() => {
                    // The peer closed the connection in the middle of the handshake.
                    return Poll::Ready(Err(Failure::Tls(TlsCause::Protocol)));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = &mut self.deadline else { return false };
        if tokio::time::Instant::now() >= deadline.at {
            return true;
        }
        // The timer needs a runtime; without one (a call from outside), the driver arms it.
        if deadline.sleep.is_none() && tokio::runtime::Handle::try_current().is_ok() {
            deadline.sleep = Some(Box::pin(tokio::time::sleep_until(deadline.at)));
        }
        match &mut deadline.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Hands every TLS record rustls has ready to the transport.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut out = WriteAdapter { inner: &mut *self.inner, cx };
            match self.conn.write_tls(&mut out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes from the transport and processes them; `Ok(0)` at its end of stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut input = ReadAdapter { inner: &mut *self.inner, prefix: &mut self.prefix, cx };
        let n = match self.conn.read_tls(&mut input) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let conn = &mut self.conn;
        if let Err(err) = with_stream(&mut self.rng, || conn.process_new_packets()) {
            let cause = tls_cause(&err, self.role);
            tracing::debug!(error = %err, role = self.role.as_str(), ?cause, "TLS failed");
            // Send the alert rustls queued, if the transport takes it now.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(tls_io(Cause::Tls(cause), err.to_string())));
        }
        Poll::Ready(Ok(n))
    }
}

impl TcpTransport for TlsTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        for _ in 0..TLS_STEPS {
            let window = buf.remaining().min(PLAINTEXT_WINDOW);
            let dst = buf.initialize_unfilled_to(window);
            match self.conn.reader().read(dst) {
                // Ok(0): the peer's close_notify, the clean end of the stream.
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Err(tls_io(
                        Cause::Truncated,
                        "the peer ended the connection without TLS close_notify",
                    )));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Alerts and post-handshake answers rustls wants sent; a full transport retries later.
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            match self.poll_read_tls(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if let Some(n) = self.taken.take() {
                return Poll::Ready(Ok(n));
            }
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let chunk = &data[..data.len().min(MAX_PLAINTEXT_WRITE)];
            let conn = &mut self.conn;
            let n = with_stream(&mut self.rng, || conn.writer().write(chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.taken = Some(n);
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
        match self.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_shutdown(cx),
            other => other,
        }
    }

    fn reset(self: Box<Self>) {
        self.inner.reset();
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    fn set_keep_alive(&mut self, keep_alive: Option<tcpudp_core::options::KeepAlive>) -> io::Result<()> {
        self.inner.set_keep_alive(keep_alive)
    }

    fn diag(&self) -> TcpDiag {
        self.inner.diag()
    }
}

/// `std::io::Read` over a transport polled with one context: `WouldBlock` when it is pending.
struct ReadAdapter<'a, 'b> {
    inner: &'a mut dyn TcpTransport,
    prefix: &'a mut VecDeque<Bytes>,
    cx: &'a mut Context<'b>,
}

impl Read for ReadAdapter<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(front) = self.prefix.front_mut() {
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.prefix.pop_front();
            }
            return Ok(n);
        }
        let mut rb = ReadBuf::new(buf);
        match self.inner.poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// `std::io::Write` over a transport polled with one context.
struct WriteAdapter<'a, 'b> {
    inner: &'a mut dyn TcpTransport,
    cx: &'a mut Context<'b>,
}

impl Write for WriteAdapter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- the TCP socket's side (src/tcp.rs) -------------------------------------------------------

/// A TCP socket's TLS state: the session while its handshake runs (it owns the transport until
/// the handshake settles), the negotiated ALPN, and `start_tls()`'s outcome.
///
/// A plain socket that never asks for TLS keeps only the flag and an empty box slot (16 bytes of
/// its shared state, not 112): the rest is allocated by the first TLS step (DESIGN §5).
#[derive(Default)]
pub(crate) struct TlsSlot {
    /// An accepted socket: `start_tls()` runs the server side.
    accepted: bool,
    state: Option<Box<TlsState>>,
}

#[derive(Default)]
struct TlsState {
    handshake: Option<Box<TlsTransport>>,
    /// A session that could not start, reported by the next poll.
    failed: Option<Failure>,
    /// `start_tls()` asked for the next handshake.
    upgrading: bool,
    prefix: Vec<Bytes>,
    alpn: Option<Vec<u8>>,
    outcome: Option<Result<(), SocketError>>,
    waiters: Vec<Waker>,
}

impl TlsSlot {
    /// The slot of a socket a server accepted; `alpn` when its TLS handshake already ran.
    pub(crate) fn accepted(alpn: Option<Vec<u8>>) -> Self {
        let state = alpn.map(|alpn| Box::new(TlsState { alpn: Some(alpn), ..TlsState::default() }));
        TlsSlot { accepted: true, state }
    }

    fn state(&mut self) -> &mut TlsState {
        self.state.get_or_insert_with(Box::default)
    }

    /// The negotiated ALPN protocol, once a handshake finished with one.
    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.state.as_ref().and_then(|state| state.alpn.clone())
    }

    /// `start_tls()` is about to be asked of the machine: checks that this end can run its side.
    pub(crate) fn begin_upgrade(&mut self, net: &Network) -> Result<(), SocketError> {
        let tls = net.tls();
        let supported = if self.accepted { tls.server_configured() } else { tls.client_supported() };
        if !supported {
            return Err(SocketError::new(tcpudp_core::ErrorName::NotSupportedError).with_message(
                if self.accepted {
                    "start_tls on an accepted socket needs server credentials in the TLS context"
                } else {
                    "TLS is disabled in this network's TLS context"
                },
            ));
        }
        let state = self.state();
        state.upgrading = true;
        state.outcome = None;
        Ok(())
    }

    /// The machine refused `start_tls()`.
    pub(crate) fn abandon_upgrade(&mut self) {
        if let Some(state) = &mut self.state {
            state.upgrading = false;
            state.prefix.clear();
        }
    }

    /// Bytes that were waiting in the readable when `start_tls()` was called: the first bytes
    /// the TLS session reads.
    pub(crate) fn push_prefix(&mut self, data: Bytes) {
        self.state().prefix.push(data);
    }

    /// `IoCommand::TlsHandshake`: wraps the transport in a session.
    pub(crate) fn start(
        &mut self,
        net: &Network,
        remote_address: &str,
        transport: Option<Box<dyn TcpTransport>>,
    ) {
        let role = if self.accepted { Role::Server } else { Role::Client };
        let state = self.state();
        let Some(transport) = transport else {
            state.failed = Some(Failure::Io(Cause::Other));
            return;
        };
        let prefix = std::mem::take(&mut state.prefix);
        match TlsTransport::start(net, transport, role, remote_address, prefix, state.upgrading) {
            Ok(session) => state.handshake = Some(Box::new(session)),
            Err((transport, cause)) => {
                drop(transport);
                state.failed = Some(Failure::Tls(cause));
            }
        }
    }

    /// Polls the handshake; when it settles, the session becomes `transport` (success) and the
    /// report is returned.
    #[inline]
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        transport: &mut Option<crate::tcp::Transport>,
    ) -> Option<IoEvent> {
        // Every I/O step of every TCP socket asks: without a handshake there is nothing to do.
        let state = self.state.as_mut()?;
        if state.failed.is_none() && state.handshake.is_none() {
            return None;
        }
        state.poll_handshake(cx, transport)
    }

    /// Applies a keep-alive change to the transport a handshake holds.
    pub(crate) fn set_keep_alive(&mut self, keep_alive: Option<tcpudp_core::options::KeepAlive>) {
        if let Some(session) = self.state.as_mut().and_then(|state| state.handshake.as_mut()) {
            let _ = session.set_keep_alive(keep_alive);
        }
    }

    /// The socket released its transport: a handshake in progress ends with it.
    pub(crate) fn release(&mut self, reset: bool) {
        let Some(state) = &mut self.state else { return };
        if let Some(session) = state.handshake.take() {
            if reset {
                session.reset();
            }
        }
        state.prefix.clear();
        if state.upgrading && state.outcome.is_none() {
            state.settle(Err(SocketError::abort().with_message("the socket closed during start_tls")));
        }
    }

    /// `start_tls()`'s outcome, or registers `cx` for it.
    pub(crate) fn poll_upgrade(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let state = match &mut self.state {
            Some(state) if state.outcome.is_some() || state.upgrading => state,
            _ => {
                return Poll::Ready(
                    Err(SocketError::invalid_state().with_message("no start_tls in progress")),
                )
            }
        };
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl TlsState {
    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        transport: &mut Option<crate::tcp::Transport>,
    ) -> Option<IoEvent> {
        if let Some(failure) = self.failed.take() {
            self.settle(Err(SocketError::network(failure.cause())));
            return Some(failure.event());
        }
        let session = self.handshake.as_mut()?;
        match session.poll_handshake(cx) {
            Poll::Pending => None,
            Poll::Ready(Ok(alpn)) => {
                if let Some(session) = self.handshake.take() {
                    *transport = Some(crate::tcp::Transport::Session(session));
                }
                self.alpn = alpn.clone();
                self.settle(Ok(()));
                Some(IoEvent::TlsDone { alpn })
            }
            Poll::Ready(Err(failure)) => {
                tracing::debug!(?failure, "TLS handshake failed");
                // The machine answers with Reset or Close, which releases the session.
                self.settle(Err(SocketError::network(failure.cause())));
                Some(failure.event())
            }
        }
    }

    fn settle(&mut self, outcome: Result<(), SocketError>) {
        if self.upgrading {
            self.upgrading = false;
            self.outcome = Some(outcome);
            for waker in self.waiters.drain(..) {
                waker.wake();
            }
        }
    }
}

/// Where [`StartTlsFuture`] reads its outcome (the socket's shared state).
pub(crate) trait UpgradeSource: Send + Sync + 'static {
    fn poll_upgrade(&self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;
}

/// The future of [`TcpSocket::start_tls`](crate::TcpSocket::start_tls): `Ok` once the handshake
/// is done and traffic is encrypted; `InvalidStateError` when the socket was not an idle open
/// plain socket; `NotSupportedError` without the credentials this end needs; `NetworkError` with
/// a TLS cause when the handshake failed (the socket is then closed, EXT-07). The upgrade runs
/// whether or not this future is polled.
#[must_use = "start_tls() runs anyway; await this to learn how it ended"]
pub struct StartTlsFuture {
    source: Option<Arc<dyn UpgradeSource>>,
    early: Option<Result<(), SocketError>>,
}

impl StartTlsFuture {
    pub(crate) fn new(source: Arc<dyn UpgradeSource>, early: Option<Result<(), SocketError>>) -> Self {
        StartTlsFuture { source: Some(source), early }
    }
}

impl Future for StartTlsFuture {
    type Output = Result<(), SocketError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.early.clone() {
            return Poll::Ready(result);
        }
        match &self.source {
            Some(source) => source.poll_upgrade(cx),
            None => Poll::Pending,
        }
    }
}

impl fmt::Debug for StartTlsFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartTlsFuture").field("early", &self.early).finish_non_exhaustive()
    }
}

// ---- the server's side (src/server.rs) --------------------------------------------------------

/// A settled server handshake: the transport and its ALPN, or why it failed.
pub(crate) type Settled = Result<(Box<dyn TcpTransport>, Option<Vec<u8>>), Cause>;

/// A TLS server's connections whose handshakes run (EXT-08): each is reported when its handshake
/// settles, in completion order; a failed or timed-out one is an unservable connection.
pub(crate) struct TlsAcceptor {
    net: Network,
    handshaking: Vec<TlsTransport>,
    settled: VecDeque<Settled>,
    alpn: BTreeMap<ConnId, Vec<u8>>,
}

impl TlsAcceptor {
    pub(crate) fn new(net: &Network) -> Self {
        TlsAcceptor {
            net: net.clone(),
            handshaking: Vec::new(),
            settled: VecDeque::new(),
            alpn: BTreeMap::new(),
        }
    }

    /// Whether another accepted connection may start its handshake now.
    pub(crate) fn has_room(&self) -> bool {
        self.handshaking.len() < MAX_SERVER_HANDSHAKES
    }

    /// Starts the handshake of a connection just accepted.
    pub(crate) fn admit(&mut self, transport: Box<dyn TcpTransport>) {
        match TlsTransport::start(&self.net, transport, Role::Server, "", Vec::new(), true) {
            Ok(session) => self.handshaking.push(session),
            Err((transport, cause)) => {
                drop(transport);
                self.settled.push_back(Err(Cause::Tls(cause)));
            }
        }
    }

    /// The next connection whose handshake settled: the transport and its ALPN, or why it
    /// failed. Every handshake is polled, so each has its wakers registered.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Option<Settled> {
        let mut i = 0;
        while i < self.handshaking.len() {
            match self.handshaking[i].poll_handshake(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(result) => {
                    let session = self.handshaking.remove(i);
                    self.settled.push_back(match result {
                        Ok(alpn) => Ok((Box::new(session) as Box<dyn TcpTransport>, alpn)),
                        Err(failure) => {
                            tracing::debug!(?failure, "TLS server handshake failed");
                            Err(failure.cause())
                        }
                    });
                }
            }
        }
        let next = self.settled.pop_front();
        if !self.settled.is_empty() {
            cx.waker().wake_by_ref();
        }
        next
    }

    /// Remembers the ALPN of a connection reported as accepted.
    pub(crate) fn record_alpn(&mut self, conn: ConnId, alpn: Option<Vec<u8>>) {
        if let Some(alpn) = alpn {
            self.alpn.insert(conn, alpn);
        }
    }

    /// The ALPN of a connection being delivered (or released).
    pub(crate) fn take_alpn(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        self.alpn.remove(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_drbg_is_a_pure_function_of_its_parts() {
        let fill = |seed| {
            let mut d = Drbg::for_session(seed, Role::Client, None, None, 3);
            let mut out = [0u8; 80];
            d.fill(&mut out[..7]);
            d.fill(&mut out[7..]);
            out
        };
        assert_eq!(fill(1), fill(1));
        assert_ne!(fill(1), fill(2));
        let mut a = Drbg::for_session(1, Role::Server, None, None, 3);
        let mut b = [0u8; 80];
        a.fill(&mut b);
        assert_ne!(b, fill(1), "roles draw from different streams");
    }

    #[test]
    fn test_sim_random_refuses_outside_a_session() {
        let mut buf = [0u8; 4];
        assert!(SimRandom.fill(&mut buf).is_err());
        let mut rng = Some(Drbg::from_parts(&[b"x"]));
        with_stream(&mut rng, || SimRandom.fill(&mut buf)).unwrap();
        assert!(rng.is_some(), "the stream is handed back");
        assert!(SimRandom.fill(&mut buf).is_err());
    }

    #[test]
    fn test_sim_x25519_agrees_and_is_seeded() {
        let mut a = Some(Drbg::from_parts(&[b"a"]));
        let mut b = Some(Drbg::from_parts(&[b"b"]));
        let ka = with_stream(&mut a, || SimX25519.start()).unwrap();
        let kb = with_stream(&mut b, || SimX25519.start()).unwrap();
        let (pa, pb) = (ka.pub_key().to_vec(), kb.pub_key().to_vec());
        let sa = ka.complete(&pb).unwrap();
        let sb = kb.complete(&pa).unwrap();
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        let mut a2 = Some(Drbg::from_parts(&[b"a"]));
        let ka2 = with_stream(&mut a2, || SimX25519.start()).unwrap();
        assert_eq!(ka2.pub_key(), &pa[..], "the same stream gives the same key share");
        assert!(ka2.complete(&[0u8; 32]).is_err(), "a non-contributory share is refused");
    }

    #[test]
    fn test_io_cause_reads_tls_causes() {
        assert_eq!(io_cause(&tls_io(Cause::Truncated, "x")), Cause::Truncated);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(io_cause(&reset), Cause::Reset);
    }

    #[test]
    fn test_error_mapping_by_role() {
        use rustls::Error as E;
        let c = |e: E| tls_cause(&e, Role::Client);
        assert_eq!(c(E::InvalidCertificate(CertificateError::UnknownIssuer)), TlsCause::UnknownIssuer);
        assert_eq!(c(E::InvalidCertificate(CertificateError::NotValidForName)), TlsCause::NameMismatch);
        assert_eq!(c(E::InvalidCertificate(CertificateError::Expired)), TlsCause::Expired);
        assert_eq!(c(E::AlertReceived(AlertDescription::CertificateRequired)), TlsCause::ClientCertificate);
        assert_eq!(c(E::DecryptError), TlsCause::Protocol);
        let s = |e: E| tls_cause(&e, Role::Server);
        assert_eq!(s(E::NoCertificatesPresented), TlsCause::ClientCertificate);
        assert_eq!(s(E::InvalidCertificate(CertificateError::UnknownIssuer)), TlsCause::ClientCertificate);
        assert_eq!(s(E::AlertReceived(AlertDescription::UnknownCA)), TlsCause::UnknownIssuer);
    }
}
