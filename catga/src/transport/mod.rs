//! Node-to-node transport: authenticated, multiplexed RPC over TCP, with
//! mutual TLS when configured.
//!
//! Each node runs one server and one connection pool. A pool keeps
//! one TCP connection per peer and multiplexes many requests on it; a server
//! answers requests concurrently, at most `max_in_flight_per_conn` at a time
//! per connection.
//!
//! A round trip costs as few task hand-offs as it can: a caller writes its
//! request to the socket itself (`conn::Writer`: a non-blocking write under
//! a lock; only what the socket does not take at once goes to the
//! connection's flush task), and the server serves Raft's requests on the
//! connection's own task, writing each answer the same way; only the
//! mediator's requests, which run user handlers, get a task each. On a
//! busy 2-core machine each hand-off costs tens of microseconds, and a
//! round trip used to take six.
//!
//! A connection that goes silent while calls wait (a network cut that drops
//! packets leaves the TCP connection open, and the kernel's retransmissions
//! back off to many seconds) is pinged and then closed after `dead_after`,
//! so the next call connects afresh (`pool::read_loop`); TCP keepalive ends
//! idle ones whose peer vanished.
//!
//! # Wire format
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of an
//! rmp-serde encoded frame enum (structs as maps, enum variants by name):
//! `Hello`, `Challenge`, `Proof` and `Welcome` for the handshake, then
//! `Request { id, body }` and `Response { id, result }`. The length never
//! exceeds `max_frame_bytes` (checked when reading and when writing; during
//! the handshake the limit is 1 KiB).
//!
//! # Handshake (mutual challenge-response)
//!
//! ```text
//! client → server  Hello     { node: c, nonce: Nc, ident: Ic }
//! server → client  Challenge { node: s, nonce: Ns, ident: Is, proof: HMAC(secret, "server" c s Nc Ns Ic Is) }
//! client → server  Proof     { proof: HMAC(secret, "client" c s Nc Ns Ic Is) }
//! server → client  Welcome   (or Refused { reason })
//! client → server  Refused { reason }   (only when the client refuses the server)
//! ```
//!
//! `ident` (optional) is the sender's cluster id and the incarnation of its
//! data dir; each side hands the other's to its [`PeerCheck`] (the data
//! dir's record of the peers it has known), which may refuse it: a node
//! whose data dir was wiped comes back with a new incarnation and is kept
//! out instead of voting with no history. The client checks the server's
//! before sending its proof; the server checks the client's after verifying
//! the proof and answers `Refused` with the reason. A client that refuses
//! the server still sends its proof, then `Refused` as its first frame after
//! `Welcome`: either way the refused node hears why from a peer that proved
//! the secret, and knows it is refused (`PeerCheck::refused_by`), instead
//! of passing for a replica.
//!
//! Nonces are 32 fresh random bytes per connection, so a recorded proof is
//! useless on another connection; the role label keeps one side's proof from
//! being reflected as the other's. The secret never crosses the wire.
//!
//! # TLS
//!
//! With a [`TlsConfig`](crate::TlsConfig), every connection is mutual TLS
//! (rustls, TLS 1.3) before the handshake above, which then runs inside it
//! (its identities and refusals still apply; the secret is a formality
//! there). The client dials node `expected` by the name its certificate must
//! carry (`node-<id>.<domain>`); the server checks that the client's
//! certificate names the id in its `Hello` (`tls::check_claim`). After the
//! handshakes the frames are encrypted by their senders straight into the
//! writer's buffer (`tls.rs`), so TLS keeps the direct write path.
//!
//! It knows nothing above it: a [`Service`] answers requests, whatever they
//! are; a [`Mux`] puts the mediator's service beside Raft's on one server
//! (a leading tag byte, see `mux.rs`). The test fault switch ([`Faults`]) is reached through
//! `catga::testing`, the frame decoder (for fuzzing) through
//! `catga::__private::wire`.

mod auth;
mod conn;
mod faults;
mod frame;
mod mux;
mod pool;
mod server;
#[cfg(test)]
mod tests;
mod tls;
#[cfg(test)]
mod tls_tests;

use std::time::Duration;

pub use faults::Faults;
pub use frame::{Frame, FrameError, Ident, decode_frame, decode_stream};
pub(crate) use mux::{Mux, mediator_body};
pub(crate) use pool::Pool;
pub(crate) use server::Server;

/// Decides whether a peer's identity is acceptable (see the module docs).
pub(crate) trait PeerCheck: Send + Sync {
    /// This node's identity, announced in the handshake.
    fn local(&self) -> Option<Ident>;
    /// `Err(reason)` refuses the connection.
    fn check(&self, peer: u64, ident: Option<Ident>) -> Result<(), String>;
    /// `peer` (authenticated) refused this node, saying `reason`.
    fn refused_by(&self, _peer: u64, _reason: &str) {}
    /// `peer` (authenticated) accepted this node.
    fn accepted_by(&self, _peer: u64) {}
    /// Whether a refusal between this node and `peer` (either way) is worth
    /// a log line now: the first, then at most one a minute, so that a peer
    /// that keeps retrying does not flood the log.
    fn log_refusal_now(&self, _peer: u64) -> bool {
        true
    }
}

/// Settings shared by a node's server and pool.
#[derive(Clone)]
pub(crate) struct TransportConfig {
    /// This node's id, announced in the handshake.
    pub node_id: u64,
    /// The cluster secret both ends must prove they know.
    pub secret: Vec<u8>,
    /// The largest frame read or written (default 64 MiB).
    pub max_frame_bytes: usize,
    /// How long a TCP connect may take (default 3 s: longer than the
    /// kernel's first SYN retransmission, 1 s, so one dropped SYN, e.g. a
    /// full accept queue, is not a failed connect). A connect runs on its
    /// own time, not its callers': a caller with a shorter deadline gives
    /// up waiting, the attempt goes on for the callers after it.
    pub connect_timeout: Duration,
    /// How long the whole handshake may take, on either side.
    pub handshake_timeout: Duration,
    /// How many requests a server handles at once on one connection; further
    /// requests wait in the socket (backpressure).
    pub max_in_flight_per_conn: usize,
    /// Bytes a connection's writer holds that the socket has not taken yet
    /// beyond which senders wait (backpressure; default 8 MiB).
    pub write_buffer: usize,
    /// How many connections a server holds at once (more are refused).
    pub max_connections: usize,
    /// The wait after the first failed connect to a peer; it doubles with
    /// every further failure up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    /// The longest wait between failed connects.
    pub reconnect_backoff_max: Duration,
    /// A connection with calls waiting that has read nothing for this long
    /// is pinged (default 500 ms).
    pub probe_after: Duration,
    /// ... and closed as dead once it has read nothing for this long
    /// (default 2 s): see `pool::read_loop`.
    pub dead_after: Duration,
    /// Checks peers' identities; none: any peer that knows the secret.
    pub identity: Option<std::sync::Arc<dyn PeerCheck>>,
    /// Mutual TLS on every connection (see `tls.rs`); none: plaintext.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("identity", &self.identity.as_ref().and_then(|i| i.local()))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            node_id: 0,
            secret: Vec::new(),
            max_frame_bytes: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(2),
            max_in_flight_per_conn: 256,
            write_buffer: 8 * 1024 * 1024,
            max_connections: 4096,
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(250),
            probe_after: Duration::from_millis(500),
            dead_after: Duration::from_secs(2),
            identity: None,
            tls: None,
        }
    }
}

/// Socket options of every node-to-node connection: no Nagle delay, and
/// TCP keepalive so the kernel ends a connection whose peer vanished even
/// when nothing is sent on it (the pool's own watch covers the busy ones).
fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(2));
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

impl TransportConfig {
    /// The largest request or response body that fits in a frame.
    pub(crate) fn max_body(&self) -> usize {
        self.max_frame_bytes.saturating_sub(frame::FRAME_OVERHEAD)
    }
}

/// What a server does with a request.
pub(crate) trait Service: Send + Sync + 'static {
    /// Handles one request from an authenticated peer `from` (its node id).
    fn call(
        &self,
        from: u64,
        body: bytes::Bytes,
    ) -> futures::future::BoxFuture<'static, Result<bytes::Bytes, String>>;

    /// Whether the request is served on the connection's own task (no
    /// hand-off to another task): true for requests that never block and
    /// answer soon, as Raft's do; false for those that run user code.
    fn inline(&self, _body: &bytes::Bytes) -> bool {
        true
    }
}

/// Why a call through the pool failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum TransportError {
    /// The peer could not be reached, or the connection died before the
    /// response came (the request may or may not have been handled).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No response before the deadline (the request may have been handled).
    #[error("no response before the deadline")]
    Timeout,
    /// The peer's service returned an error.
    #[error("the peer answered with an error: {0}")]
    Remote(String),
    /// The body does not fit in a frame; nothing was sent.
    #[error("a body of {size} bytes exceeds the limit of {max} bytes (raise max_frame_bytes)")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The largest body that fits in a frame.
        max: usize,
    },
    /// The peer failed the handshake (wrong cluster secret, or not the node
    /// expected at that address).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer is not accepted (another cluster, or a data dir that was
    /// wiped): refused by it or by this node.
    #[error("{0}")]
    Refused(String),
    /// The pool was shut down.
    #[error("the transport is shut down")]
    Closed,
}
