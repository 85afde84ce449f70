//! TLS settings: the cluster's CA and this node's certificate and key
//! ([`TlsConfig`]), reloaded when their files change; [`DevCa`] (feature
//! `dev-certs`) mints development certificates.
//!
//! A node's certificate names it: its subject alternative name is the DNS
//! name `node-<id>.<domain>` (`domain` defaults to `catga`). Both ends of a
//! node-to-node connection present their certificate, both check the other
//! chains to the cluster's CA, and each checks that the certificate names
//! the node id the peer claims: the client by dialling that name (SNI), the
//! server when the client says who it is. A valid certificate of node 3
//! therefore cannot pose as node 1.
//!
//! This module is a leaf: the transport and the HTTP door read it, it reads
//! nothing of theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};

/// How often a connection may look at the files' modification times.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The cluster's CA, this node's certificate chain and its private key, in
/// PEM. Cloning gives another handle to the same settings: a
/// [`reload`](TlsConfig::reload) through one is seen by all.
///
/// ```no_run
/// # async fn f() -> catga::Result<()> {
/// let tls = catga::TlsConfig::from_pem_files("tls/ca.pem", "tls/node-1.pem", "tls/node-1.key")?;
/// let node = catga::cluster()
///     .node_id(1)
///     .listen("10.0.0.1:7001")
///     .peer(2, "10.0.0.2:7001")
///     .peer(3, "10.0.0.3:7001")
///     .tls(tls)
///     .data_dir("data/1")
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
///
/// Certificates rotate without a restart: replace the files (write new ones
/// beside them and rename them over the old, so that no reader sees half a
/// file); new connections use them from the next connection made at least a
/// second after the change, or at once after [`reload`](TlsConfig::reload).
/// Connections already open keep the certificates they were opened with.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    domain: String,
    loaded: RwLock<Loaded>,
    /// When the files were last looked at, and their modification times then.
    checked: Mutex<(Instant, Option<[SystemTime; 3]>)>,
}

enum Source {
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    Memory,
}

#[derive(Clone)]
struct Loaded {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    #[cfg_attr(not(test), allow(dead_code))]
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TlsConfig");
        if let Source::Files { ca, cert, key } = &self.inner.source {
            d.field("ca", ca).field("cert", cert).field("key", key);
        }
        d.field("domain", &self.inner.domain)
            .finish_non_exhaustive()
    }
}

fn bad(reason: String) -> Error {
    Error::Config {
        setting: "tls",
        reason,
    }
}

impl TlsConfig {
    /// Reads the CA certificate(s), this node's certificate chain (its own
    /// certificate first) and its private key from PEM files. Fails if a
    /// file is missing or does not parse, or if the key is not the
    /// certificate's.
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig> {
        let (ca, cert, key) = (
            ca.as_ref().to_path_buf(),
            cert.as_ref().to_path_buf(),
            key.as_ref().to_path_buf(),
        );
        let mtimes = mtimes(&ca, &cert, &key);
        let loaded = load_files(&ca, &cert, &key)?;
        Ok(TlsConfig {
            inner: Arc::new(Inner {
                source: Source::Files { ca, cert, key },
                domain: "catga".into(),
                loaded: RwLock::new(loaded),
                checked: Mutex::new((Instant::now(), mtimes)),
            }),
        })
    }

    /// Like [`from_pem_files`](TlsConfig::from_pem_files), from PEM text in
    /// memory (not reloaded: there are no files to watch).
    pub fn from_pem(
        ca: impl AsRef<[u8]>,
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<TlsConfig> {
        let loaded = load(ca.as_ref(), cert.as_ref(), key.as_ref())?;
        Ok(TlsConfig {
            inner: Arc::new(Inner {
                source: Source::Memory,
                domain: "catga".into(),
                loaded: RwLock::new(loaded),
                checked: Mutex::new((Instant::now(), None)),
            }),
        })
    }

    /// The DNS domain of the nodes' names (default `catga`): node `id`'s
    /// certificate must name `node-<id>.<domain>`. Use your cluster's
    /// name when one CA signs certificates for several clusters.
    pub fn domain(self, domain: impl Into<String>) -> TlsConfig {
        let inner = &self.inner;
        let source = match &inner.source {
            Source::Files { ca, cert, key } => Source::Files {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            Source::Memory => Source::Memory,
        };
        TlsConfig {
            inner: Arc::new(Inner {
                source,
                domain: domain.into(),
                loaded: RwLock::new(inner.loaded.read().clone()),
                checked: Mutex::new(*inner.checked.lock()),
            }),
        }
    }

    /// The name node `id`'s certificate must carry: `node-<id>.<domain>`.
    pub fn node_name(&self, id: u64) -> String {
        format!("node-{id}.{}", self.inner.domain)
    }

    /// Reads the files again now. On an error (a file half written, a key
    /// that is not the certificate's) the settings in use stay as they were.
    pub fn reload(&self) -> Result<()> {
        let Source::Files { ca, cert, key } = &self.inner.source else {
            return Ok(());
        };
        let m = mtimes(ca, cert, key);
        let loaded = load_files(ca, cert, key)?;
        *self.inner.loaded.write() = loaded;
        *self.inner.checked.lock() = (Instant::now(), m);
        tracing::info!(cert = %cert.display(), "tls: certificates reloaded");
        Ok(())
    }

    /// Reloads if the files changed since they were last read (looked at
    /// at most once a second); a failed reload is logged and the settings
    /// in use stay.
    fn refresh(&self) {
        let Source::Files { ca, cert, key } = &self.inner.source else {
            return;
        };
        {
            let mut checked = self.inner.checked.lock();
            if checked.0.elapsed() < CHECK_EVERY {
                return;
            }
            let now = mtimes(ca, cert, key);
            checked.0 = Instant::now();
            if now == checked.1 {
                return;
            }
            // recorded even if the reload fails: the next change retries
            checked.1 = now;
        }
        match load_files(ca, cert, key) {
            Ok(loaded) => {
                *self.inner.loaded.write() = loaded;
                tracing::info!(cert = %cert.display(), "tls: certificate files changed; reloaded");
            }
            Err(e) => tracing::warn!(error = %e,
                "tls: certificate files changed but do not load; still using the previous ones"),
        }
    }

    /// The client settings for a new connection.
    pub(crate) fn client(&self) -> Arc<ClientConfig> {
        self.refresh();
        self.inner.loaded.read().client.clone()
    }

    /// The server settings for a new connection.
    pub(crate) fn server(&self) -> Arc<ServerConfig> {
        self.refresh();
        self.inner.loaded.read().server.clone()
    }

    /// The name to dial node `id` by.
    pub(crate) fn server_name(&self, id: u64) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.node_name(id))
            .map_err(|e| format!("`{}` is not a DNS name: {e}", self.node_name(id)))
    }

    /// Whether `cert` (a peer's, already verified against the CA) names node `id`.
    pub(crate) fn check_names(&self, cert: &CertificateDer<'_>, id: u64) -> Result<(), String> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)
            .map_err(|e| format!("its certificate does not parse: {e}"))?;
        let name = self.server_name(id)?;
        rustls::client::verify_server_name(&parsed, &name).map_err(|e| {
            format!(
                "its certificate is not for node {id} (it must name `{}`): {e}",
                self.node_name(id)
            )
        })
    }

    /// The CA certificates trusted.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.refresh();
        self.inner.loaded.read().roots.clone()
    }
}

fn mtimes(ca: &Path, cert: &Path, key: &Path) -> Option<[SystemTime; 3]> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some([m(ca)?, m(cert)?, m(key)?])
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| bad(format!("cannot read the {what} file {}: {e}", p.display())))
}

fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<Loaded> {
    load(
        &read("CA", ca)?,
        &read("certificate", cert)?,
        &read("key", key)?,
    )
}

/// The crypto provider: ring, TLS 1.3 only.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM text.
pub(crate) fn certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("the {what} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(format!("the {what} holds no certificate")));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub(crate) fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(format!("the private key: {e}")))
}

fn load(ca: &[u8], cert: &[u8], key_pem: &[u8]) -> Result<Loaded> {
    let mut roots = RootCertStore::empty();
    for c in certs("CA file", ca)? {
        roots
            .add(c)
            .map_err(|e| bad(format!("a CA certificate is not usable: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain = certs("certificate file", cert)?;
    let key = key(key_pem)?;
    let provider = provider();
    let versions = &[&rustls::version::TLS13];
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| bad(format!("the CA: {e}")))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| bad(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| bad(format!("the certificate and key: {e}")))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(format!("the certificate and key: {e}")))?;
    Ok(Loaded {
        client: Arc::new(client),
        server: Arc::new(server),
        roots,
    })
}

#[cfg(any(feature = "dev-certs", test))]
pub use dev::{DevCa, NodeCert, write_atomic};

#[cfg(any(feature = "dev-certs", test))]
mod dev {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    use super::TlsConfig;
    use crate::error::Result;

    /// A development certificate authority (feature `dev-certs`): mints a
    /// fresh CA and certificates for node ids, for examples, tests and a
    /// first try. Its key lives in memory (and in the files you write); in
    /// production use your own CA.
    ///
    /// ```
    /// # fn main() -> catga::Result<()> {
    /// let ca = catga::tls::DevCa::new()?;
    /// let node1 = ca.tls_config(1)?;
    /// # drop(node1);
    /// # Ok(()) }
    /// ```
    pub struct DevCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
        domain: String,
    }

    impl std::fmt::Debug for DevCa {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DevCa")
                .field("domain", &self.domain)
                .finish_non_exhaustive()
        }
    }

    /// A node's certificate and private key, in PEM.
    #[derive(Clone)]
    pub struct NodeCert {
        /// The certificate.
        pub cert_pem: String,
        /// The private key (PKCS#8).
        pub key_pem: String,
    }

    impl std::fmt::Debug for NodeCert {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NodeCert").finish_non_exhaustive()
        }
    }

    fn bad(e: rcgen::Error) -> crate::Error {
        super::bad(format!("minting a development certificate: {e}"))
    }

    impl DevCa {
        /// A new CA for nodes named `node-<id>.catga`.
        pub fn new() -> Result<DevCa> {
            DevCa::with_domain("catga")
        }

        /// A new CA for nodes named `node-<id>.<domain>` (see
        /// [`TlsConfig::domain`]).
        pub fn with_domain(domain: impl Into<String>) -> Result<DevCa> {
            let domain = domain.into();
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
            params.distinguished_name.push(
                DnType::CommonName,
                format!(
                    "catga development CA {:08x} ({domain})",
                    rand::random::<u32>()
                ),
            );
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().map_err(bad)?;
            let issuer = CertifiedIssuer::self_signed(params, key).map_err(bad)?;
            Ok(DevCa { issuer, domain })
        }

        /// The CA's certificate: what every node trusts.
        pub fn ca_pem(&self) -> String {
            self.issuer.pem()
        }

        /// A certificate for node `id` (valid for as long as you need: a
        /// development certificate does not expire).
        pub fn node(&self, id: u64) -> Result<NodeCert> {
            self.mint(&format!("node-{id}.{}", self.domain), false)
        }

        /// A certificate for any DNS name or IP address (an HTTP server's,
        /// say), valid like [`node`](DevCa::node)'s.
        pub fn server(&self, name: &str) -> Result<NodeCert> {
            self.mint(name, false)
        }

        /// A certificate for node `id` that expired in 2001 (for tests).
        pub fn expired_node(&self, id: u64) -> Result<NodeCert> {
            self.mint(&format!("node-{id}.{}", self.domain), true)
        }

        fn mint(&self, name: &str, expired: bool) -> Result<NodeCert> {
            let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            if expired {
                params.not_before = rcgen::date_time_ymd(2000, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }
            let key = KeyPair::generate().map_err(bad)?;
            let cert = params.signed_by(&key, &self.issuer).map_err(bad)?;
            Ok(NodeCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }

        /// Node `id`'s settings, in memory (not reloadable).
        pub fn tls_config(&self, id: u64) -> Result<TlsConfig> {
            let c = self.node(id)?;
            Ok(TlsConfig::from_pem(self.ca_pem(), c.cert_pem, c.key_pem)?.domain(&self.domain))
        }

        /// Writes `ca.pem`, `node-<id>.pem` and `node-<id>.key` into `dir`
        /// (created if needed) and returns their paths, in that order, for
        /// [`TlsConfig::from_pem_files`].
        pub fn write_node_files(
            &self,
            dir: impl AsRef<Path>,
            id: u64,
        ) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
            let dir = dir.as_ref();
            std::fs::create_dir_all(dir)?;
            let c = self.node(id).map_err(std::io::Error::other)?;
            let paths = (
                dir.join("ca.pem"),
                dir.join(format!("node-{id}.pem")),
                dir.join(format!("node-{id}.key")),
            );
            write_atomic(&paths.0, self.ca_pem().as_bytes(), false)?;
            write_atomic(&paths.1, c.cert_pem.as_bytes(), false)?;
            write_atomic(&paths.2, c.key_pem.as_bytes(), true)?;
            Ok(paths)
        }
    }

    /// Writes `path` by renaming a finished file over it, so that a reader
    /// never sees half of it; a `private` file is readable by its owner only.
    pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp~");
        let _ = std::fs::remove_file(&tmp);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        std::io::Write::write_all(&mut o.open(&tmp)?, bytes)?;
        std::fs::rename(&tmp, path)
    }
}
