//! TLS for the HTTP door: [`HttpTls`] (a certificate and key for the
//! names clients use, optionally a CA whose client certificates are
//! required) and [`serve_tls`].
//!
//! TLS handshakes run concurrently, each with a deadline, beside the accept
//! loop: a client that stalls its handshake holds up no one else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};
use crate::tls::{certs, key, provider};

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The HTTP door's TLS: its certificate chain and key (for the names your
/// clients use: a DNS name or an IP address), and optionally a CA whose
/// client certificates every client must present (mutual TLS).
/// Cloning gives another handle to the same settings.
///
/// Like [`TlsConfig`](crate::TlsConfig), files are reloaded when they
/// change (looked at, at most once a second, when a client connects) or
/// on [`reload`](HttpTls::reload); connections already open keep theirs.
///
/// ```no_run
/// # async fn f(app: catga::http::axum::Router) -> Result<(), Box<dyn std::error::Error>> {
/// let tls = catga::http::HttpTls::from_pem_files("tls/api.pem", "tls/api.key")?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// catga::http::serve_tls(listener, app, tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: Option<Files>,
    current: RwLock<Arc<ServerConfig>>,
    checked: Mutex<(Instant, Option<Vec<SystemTime>>)>,
}

#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }

    fn mtimes(&self) -> Option<Vec<SystemTime>> {
        self.paths()
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn load(&self) -> Result<ServerConfig> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))
        };
        let ca = match &self.client_ca {
            Some(p) => Some(read(p)?),
            None => None,
        };
        server_config(&read(&self.cert)?, &read(&self.key)?, ca.as_deref())
    }
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("HttpTls");
        if let Some(files) = &self.inner.files {
            d.field("cert", &files.cert)
                .field("key", &files.key)
                .field("client_ca", &files.client_ca);
        }
        d.finish_non_exhaustive()
    }
}

fn bad(reason: String) -> Error {
    Error::Config {
        setting: "http tls",
        reason,
    }
}

fn server_config(cert: &[u8], key_pem: &[u8], client_ca: Option<&[u8]>) -> Result<ServerConfig> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| bad(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("client CA file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("a client CA certificate is not usable: {e}")))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad(format!("the client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs("certificate file", cert)?, key(key_pem)?)
        .map_err(|e| bad(format!("the certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpTls {
    /// The server's certificate chain (its own first) and private key, in
    /// PEM files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<HttpTls> {
        HttpTls::with_files(Files {
            cert: cert.as_ref().to_path_buf(),
            key: key.as_ref().to_path_buf(),
            client_ca: None,
        })
    }

    /// Like [`from_pem_files`](HttpTls::from_pem_files), from PEM text in
    /// memory (not reloaded).
    pub fn from_pem(cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<HttpTls> {
        let config = server_config(cert.as_ref(), key.as_ref(), None)?;
        Ok(HttpTls::new(None, config))
    }

    /// Requires every client to present a certificate signed by the CA in
    /// this PEM file (mutual TLS; clients without one cannot connect).
    pub fn require_client_certs(self, client_ca: impl AsRef<Path>) -> Result<HttpTls> {
        let Some(files) = &self.inner.files else {
            return Err(bad(
                "require_client_certs needs certificate files (from_pem_files)".into(),
            ));
        };
        HttpTls::with_files(Files {
            client_ca: Some(client_ca.as_ref().to_path_buf()),
            ..files.clone()
        })
    }

    fn with_files(files: Files) -> Result<HttpTls> {
        let m = files.mtimes();
        let config = files.load()?;
        let tls = HttpTls::new(Some(files), config);
        tls.inner.checked.lock().1 = m;
        Ok(tls)
    }

    fn new(files: Option<Files>, config: ServerConfig) -> HttpTls {
        HttpTls {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(Arc::new(config)),
                checked: Mutex::new((Instant::now(), None)),
            }),
        }
    }

    /// Reads the files again now; on an error the settings in use stay.
    pub fn reload(&self) -> Result<()> {
        let Some(files) = &self.inner.files else {
            return Ok(());
        };
        let m = files.mtimes();
        let config = files.load()?;
        *self.inner.current.write() = Arc::new(config);
        *self.inner.checked.lock() = (Instant::now(), m);
        Ok(())
    }

    /// The settings for a new connection, reloaded first if the files changed.
    fn current(&self) -> Arc<ServerConfig> {
        if let Some(files) = &self.inner.files {
            let changed = {
                let mut checked = self.inner.checked.lock();
                if checked.0.elapsed() >= Duration::from_secs(1) {
                    checked.0 = Instant::now();
                    let now = files.mtimes();
                    let changed = now != checked.1;
                    checked.1 = now;
                    changed
                } else {
                    false
                }
            };
            if changed {
                match files.load() {
                    Ok(c) => {
                        *self.inner.current.write() = Arc::new(c);
                        tracing::info!(cert = %files.cert.display(), "http: TLS files changed; reloaded");
                    }
                    Err(e) => tracing::warn!(error = %e,
                        "http: TLS files changed but do not load; still using the previous ones"),
                }
            }
        }
        self.inner.current.read().clone()
    }
}

/// Accepts TCP connections and hands on those whose TLS handshake succeeded.
struct TlsListener {
    tcp: TcpListener,
    tls: HttpTls,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    /// The pause after a failed accept (out of file descriptors and the
    /// like): doubles from 10 ms to 1 s while accepts keep failing.
    accept_pause: Duration,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ok)) = done {
                        return ok;
                    }
                }
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        self.accept_pause = Duration::ZERO;
                        let _ = tcp.set_nodelay(true);
                        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current());
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => Some((s, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "http: TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%addr, "http: TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // out of file descriptors and the like: back off
                        // rather than spin, until an accept succeeds
                        self.accept_pause = (self.accept_pause * 2)
                            .clamp(Duration::from_millis(10), Duration::from_secs(1));
                        tracing::warn!(error = %e, pause = ?self.accept_pause, "http: accept failed");
                        tokio::time::sleep(self.accept_pause).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// [`serve`](super::serve) over TLS: HTTPS on `listener`, with `tls`'s
/// certificate (and client certificates, if it requires them).
pub async fn serve_tls(listener: TcpListener, app: Router, tls: HttpTls) -> std::io::Result<()> {
    let listener = TlsListener {
        tcp: listener,
        tls,
        handshakes: JoinSet::new(),
        accept_pause: Duration::ZERO,
    };
    axum::serve(listener, app).await
}

/// [`serve_with_shutdown`](super::serve_with_shutdown) over TLS.
pub async fn serve_tls_with_shutdown(
    listener: TcpListener,
    app: Router,
    tls: HttpTls,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener {
        tcp: listener,
        tls,
        handshakes: JoinSet::new(),
        accept_pause: Duration::ZERO,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}
