//! Node discovery: who is in the cluster, with leases and a lossless watch.
//!
//! This module owns [`NodeInfo`], the [`Discovery`] trait and its backends
//! (a static peer list, an in-process store, Redis behind the cargo feature
//! `redis`, NATS JetStream KV behind `nats`). It only *reports*
//! membership (as [`MemberEvent`]s); deciding Raft membership is the node's
//! job, through the leader. Nothing in `raft/` depends on it.
//!
//! # Model
//!
//! * Every process [`register`](Discovery::register)s one [`NodeInfo`] and then
//!   [`heartbeat`](Discovery::heartbeat)s every
//!   [`heartbeat_interval`](DiscoveryConfig::heartbeat_interval) (default 1 s);
//!   [`HeartbeatService`] does that for you. A node whose heartbeats stop for a
//!   [`lease`](DiscoveryConfig::lease) (default 3 s) is reported
//!   `Left { reason: Expired }`; [`unregister`](Discovery::unregister) reports
//!   `Left { reason: Graceful }` at once.
//! * Every start picks a new [`incarnation`](NodeInfo::incarnation). A second
//!   live process registering the same id with another incarnation is refused
//!   with [`DiscoveryError::DuplicateId`].
//! * [`watch`](Discovery::watch) first yields the current members as
//!   `Joined` (a snapshot), then every change, each exactly once, in order
//!   per node. A consumer never has to combine `list` and `watch` itself.
//!   Across store outages the watch resynchronises and reports what changed
//!   in between (see each backend for how).
//! * `Updated` is only sent when something but the load changes, or when the
//!   load moves by more than
//!   [`load_change_threshold`](DiscoveryConfig::load_change_threshold).
//!
//! Values are stored as JSON (readable with `redis-cli` / `nats kv get`),
//! at most [`MAX_ENTRY_BYTES`] per node; anything larger, unparsable or from
//! another cluster is skipped with a log line.

mod heartbeat;
pub mod memory;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "nats")]
mod nats_watch;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_scripts;
#[cfg(feature = "redis")]
mod redis_watch;
mod source;
mod static_list;
mod view;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::error::DiscoveryError;
/// A boxed error from a store client (redis-rs, async-nats).
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) use crate::error::discovery::BoxError;
pub use heartbeat::HeartbeatService;
pub use memory::{MemoryDiscovery, MemoryStore};
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use nats::{NatsDiscovery, NatsOptions};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisDiscovery, RedisOptions};
pub use source::DiscoverySource;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use source::nats;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use source::redis;
pub use static_list::StaticDiscovery;
pub use view::MemberWatch;

/// The largest encoded [`NodeInfo`] a backend writes or accepts.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// A boxed, `Send` future: what [`Discovery`]'s methods return, so that the
/// trait can be used as `Arc<dyn Discovery>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's Raft id, unique in its cluster.
    pub id: u64,
    /// Where the node's Raft transport listens (`host:port`).
    pub raft_addr: String,
    /// Where users reach the node's API, if it serves one.
    #[serde(default)]
    pub api_addr: Option<String>,
    /// A load figure of your choice (in-flight requests, CPU share, ...).
    #[serde(default)]
    pub load: f64,
    /// Free-form labels (zone, version, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Changes on every start of the process, so that a restarted node is
    /// told apart from its previous life.
    pub incarnation: u64,
    /// The cluster the node belongs to; entries of other clusters are ignored.
    pub cluster: String,
}

impl NodeInfo {
    /// A node of `cluster` with id `id` whose Raft transport listens on
    /// `raft_addr`, with a fresh random incarnation.
    pub fn new(cluster: impl Into<String>, id: u64, raft_addr: impl Into<String>) -> Self {
        NodeInfo {
            id,
            raft_addr: raft_addr.into(),
            api_addr: None,
            load: 0.0,
            metadata: BTreeMap::new(),
            incarnation: new_incarnation(),
            cluster: cluster.into(),
        }
    }

    /// Sets the address users reach the node's API on.
    pub fn with_api_addr(mut self, addr: impl Into<String>) -> Self {
        self.api_addr = Some(addr.into());
        self
    }

    /// Adds one metadata label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Whether `other` differs from `self` enough to be worth an `Updated`:
    /// any field but the load, or the load by more than `threshold`.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // used by the store backends
    pub(crate) fn differs_significantly(&self, other: &NodeInfo, threshold: f64) -> bool {
        self.id != other.id
            || self.raft_addr != other.raft_addr
            || self.api_addr != other.api_addr
            || self.metadata != other.metadata
            || self.incarnation != other.incarnation
            || self.cluster != other.cluster
            || (self.load - other.load).abs() > threshold
            || self.load.is_nan() != other.load.is_nan()
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, DiscoveryError> {
        let bytes = serde_json::to_vec(self).map_err(DiscoveryError::Encode)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(DiscoveryError::InvalidNodeInfo(format!(
                "node {} encodes to {} bytes, more than the {MAX_ENTRY_BYTES} allowed; \
                 keep metadata small",
                self.id,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Decodes a stored entry; `None` (with a log line) for anything that is
    /// too large, not a `NodeInfo`, or from another cluster.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // used by the store backends
    pub(crate) fn decode(bytes: &[u8], cluster: &str, what: &str) -> Option<NodeInfo> {
        if bytes.len() > MAX_ENTRY_BYTES {
            tracing::warn!(
                entry = what,
                len = bytes.len(),
                "discovery: skipping oversized entry"
            );
            return None;
        }
        match serde_json::from_slice::<NodeInfo>(bytes) {
            Ok(info) if info.cluster == cluster => Some(info),
            Ok(info) => {
                tracing::warn!(entry = what, theirs = %info.cluster, ours = cluster,
                    "discovery: skipping entry of another cluster");
                None
            }
            Err(err) => {
                tracing::warn!(entry = what, error = %err, "discovery: skipping malformed entry");
                None
            }
        }
    }
}

/// A fresh incarnation: random, never zero.
fn new_incarnation() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}

/// Why a node left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// It unregistered.
    Graceful,
    /// Its lease passed without a heartbeat (a crash, a partition, or a
    /// removal the watcher only learnt about by resynchronising).
    Expired,
}

/// A change in the membership, as seen by a watcher.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A node (or a new incarnation of it) appeared.
    Joined(NodeInfo),
    /// A known node's information changed significantly.
    Updated(NodeInfo),
    /// A node is gone.
    Left {
        /// Its id.
        id: u64,
        /// The incarnation that left.
        incarnation: u64,
        /// Graceful or expired.
        reason: LeaveReason,
    },
}

/// Settings shared by every backend.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The cluster name; only nodes of this cluster are seen. Letters,
    /// digits, `-` and `_`, at most 64 characters.
    pub cluster: String,
    /// How often a node heartbeats (default 1 s).
    pub heartbeat_interval: Duration,
    /// How long a node stays a member without a heartbeat (default 3 s);
    /// more than twice the heartbeat interval, at most an hour.
    pub lease: Duration,
    /// How far the load must move before an `Updated` is sent (default 0.1).
    pub load_change_threshold: f64,
}

impl DiscoveryConfig {
    /// The defaults for `cluster`: heartbeat 1 s, lease 3 s.
    pub fn new(cluster: impl Into<String>) -> Self {
        DiscoveryConfig {
            cluster: cluster.into(),
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(3),
            load_change_threshold: 0.1,
        }
    }

    /// Sets the heartbeat interval and the lease.
    pub fn timings(mut self, heartbeat_interval: Duration, lease: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self.lease = lease;
        self
    }

    /// Checks the settings; the error says which one to change.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        let bad = |msg: String| Err(DiscoveryError::InvalidConfig(msg));
        if self.cluster.is_empty()
            || self.cluster.len() > 64
            || !self
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "cluster name {:?} must be 1-64 letters, digits, '-' or '_'",
                self.cluster
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return bad(format!(
                "heartbeat_interval {:?} is below 10 ms",
                self.heartbeat_interval
            ));
        }
        if self.lease > Duration::from_secs(3600) {
            return bad(format!(
                "lease {:?} is over an hour; a dead node would linger that long",
                self.lease
            ));
        }
        if self.lease <= self.heartbeat_interval.saturating_mul(2) {
            return bad(format!(
                "lease {:?} must be more than twice heartbeat_interval {:?}, or one late \
                 heartbeat expires a live node; raise the lease or lower the interval",
                self.lease, self.heartbeat_interval
            ));
        }
        if !self.load_change_threshold.is_finite() || self.load_change_threshold < 0.0 {
            return bad(format!(
                "load_change_threshold {} must be a finite number >= 0",
                self.load_change_threshold
            ));
        }
        Ok(())
    }

    pub(crate) fn check_info(&self, info: &NodeInfo) -> Result<(), DiscoveryError> {
        if info.cluster != self.cluster {
            return Err(DiscoveryError::InvalidNodeInfo(format!(
                "node {} says cluster {:?} but this discovery serves {:?}",
                info.id, info.cluster, self.cluster
            )));
        }
        info.encode().map(drop)
    }
}

/// A membership registry: register this node, keep it alive, and watch the
/// others. Implemented by [`StaticDiscovery`], [`RedisDiscovery`] and
/// [`NatsDiscovery`]; usable as `Arc<dyn Discovery>`.
pub trait Discovery: Send + Sync + Debug {
    /// The settings this backend runs with.
    fn config(&self) -> &DiscoveryConfig;

    /// Registers this process as `info` (its cluster must be the config's).
    /// Calling it again with the same id and incarnation updates the stored
    /// information. Fails with [`DiscoveryError::DuplicateId`] when another
    /// live process holds the id.
    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<(), DiscoveryError>>;

    /// Renews the lease and reports the current load. Re-registers by itself
    /// if the store forgot the node (an outage longer than the lease, a store
    /// that lost its data).
    fn heartbeat(&self, load: f64) -> BoxFuture<'_, Result<(), DiscoveryError>>;

    /// Leaves the cluster gracefully; watchers see `Left { Graceful }`.
    fn unregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>>;

    /// The current members, as the store holds them.
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DiscoveryError>>;

    /// A stream of the current members as `Joined`, then every change.
    fn watch(&self) -> BoxFuture<'_, Result<MemberWatch, DiscoveryError>>;

    /// Creates the cluster record `name` (letters, digits, `-`, `_`) with
    /// `value` unless it exists (Redis `SET NX`, NATS KV create), and
    /// returns the value the store holds: `value` if this call created it,
    /// the first writer's otherwise. Records never expire; they hold what a
    /// cluster must remember across processes (its id, each node's data-dir
    /// incarnation, removed node ids).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use catga::discovery::{Discovery, DiscoveryConfig, MemoryStore};
    /// let d = MemoryStore::new().discovery(DiscoveryConfig::new("shop")).unwrap();
    /// assert_eq!(d.create_record("cluster-id", "a1").await.unwrap(), "a1");
    /// assert_eq!(d.create_record("cluster-id", "b2").await.unwrap(), "a1"); // first writer wins
    /// assert_eq!(d.read_record("cluster-id").await.unwrap().as_deref(), Some("a1"));
    /// # });
    /// ```
    fn create_record<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, DiscoveryError>>;

    /// The value of the cluster record `name`, if it exists (see
    /// [`create_record`](Self::create_record) for an example).
    fn read_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DiscoveryError>>;
}

/// Checks a record name: letters, digits, `-` and `_`, 1 to 128 bytes.
pub(crate) fn check_record_name(name: &str) -> Result<(), DiscoveryError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(DiscoveryError::InvalidConfig(format!(
            "record name {name:?} must be 1-128 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_timings_are_refused() {
        assert!(DiscoveryConfig::new("c1").validate().is_ok());
        let err = DiscoveryConfig::new("c1")
            .timings(Duration::from_secs(1), Duration::from_secs(2))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("more than twice"), "{err}");
        assert!(DiscoveryConfig::new("a b").validate().is_err());
        assert!(DiscoveryConfig::new("").validate().is_err());
    }

    #[test]
    fn decode_skips_garbage_foreign_and_huge_entries() {
        let info = NodeInfo::new("c1", 7, "127.0.0.1:1");
        let bytes = info.encode().unwrap();
        assert_eq!(NodeInfo::decode(&bytes, "c1", "t"), Some(info));
        assert_eq!(NodeInfo::decode(&bytes, "c2", "t"), None);
        assert_eq!(NodeInfo::decode(b"\xff\x00garbage", "c1", "t"), None);
        assert_eq!(
            NodeInfo::decode(&vec![b' '; MAX_ENTRY_BYTES + 1], "c1", "t"),
            None
        );
    }

    #[test]
    fn load_below_threshold_is_not_significant() {
        let a = NodeInfo::new("c1", 1, "x");
        let mut b = a.clone();
        b.load = 0.05;
        assert!(!a.differs_significantly(&b, 0.1));
        b.load = 0.5;
        assert!(a.differs_significantly(&b, 0.1));
        let c = a.clone().with_metadata("zone", "a");
        assert!(a.differs_significantly(&c, 0.1));
    }
}
