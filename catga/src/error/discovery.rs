//! What can go wrong in discovery, with messages that say what to do
//! (re-exported as `catga::discovery::DiscoveryError`; here, with the other
//! error types, so that `Error` needs nothing from the layers above).

use std::time::Duration;

/// A boxed error from a store client (redis-rs, async-nats).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the discovery layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A setting is out of range.
    #[error("invalid discovery configuration: {0}")]
    InvalidConfig(String),

    /// A `NodeInfo` cannot be registered as it is.
    #[error("invalid node info: {0}")]
    InvalidNodeInfo(String),

    /// The store could not be reached when connecting.
    #[error(
        "cannot reach the discovery store at {url}; check that the server runs and the URL \
         is right (a new node needs it to form or join a cluster; a member resumes without it)"
    )]
    Unreachable {
        /// The URL that was tried.
        url: String,
        /// What the client reported.
        #[source]
        source: BoxError,
    },

    /// A store operation failed (usually a lost connection); the caller may
    /// retry, [`HeartbeatService`](crate::discovery::HeartbeatService) and watches do.
    #[error(
        "discovery store operation `{op}` failed: the store is down or the connection was lost \
         (heartbeats and watches retry by themselves; a call that returned this can be made again)"
    )]
    Store {
        /// The operation.
        op: &'static str,
        /// What the client reported.
        #[source]
        source: BoxError,
    },

    /// The store answered something this version does not understand.
    #[error("unexpected reply from the discovery store to `{op}`: {reply}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The reply, abbreviated.
        reply: String,
    },

    /// Another live process holds this node id.
    #[error(
        "node id {id} of cluster `{cluster}` is held by another live process (incarnation \
         {holder}, ours {ours}); give every node its own id, or, if that process crashed, \
         retry after its lease passes (in about {retry_after:?})"
    )]
    DuplicateId {
        /// The contested id.
        id: u64,
        /// The cluster.
        cluster: String,
        /// The incarnation holding the id.
        holder: u64,
        /// Our incarnation.
        ours: u64,
        /// When the holder's lease passes if it stops heartbeating.
        retry_after: Duration,
    },

    /// `heartbeat` or `unregister` before `register`.
    #[error("this node is not registered; call register() first")]
    NotRegistered,

    /// A `NodeInfo` could not be encoded.
    #[error("cannot encode node info")]
    Encode(#[source] serde_json::Error),
}

impl DiscoveryError {
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // used by the store backends
    pub(crate) fn store(op: &'static str, source: impl Into<BoxError>) -> Self {
        DiscoveryError::Store {
            op,
            source: source.into(),
        }
    }

    /// Whether retrying later may succeed (a store outage), as opposed to a
    /// mistake that retrying cannot fix (a duplicate id, a bad setting).
    pub fn is_transient(&self) -> bool {
        matches!(self, DiscoveryError::Store { .. })
    }
}
