//! A cluster that forms and grows by itself. This module owns what the
//! builder's `.discovery(..)` form adds to a node: the checks against the
//! store's records at start, the registration and heartbeats, the safe
//! bootstrap (`formation.rs`) and the leader's membership reconciler
//! (`reconciler.rs`).
//!
//! # Records in the store
//!
//! Created once (Redis `SET NX`, NATS KV create), never expiring:
//!
//! * `cluster-id`: the id of the cluster formed under this cluster name,
//!   written by the one node that initializes it, before it initializes;
//! * `node-<id>`: the incarnation of node `<id>`'s data dir: a node whose
//!   data dir was wiped or replaced has a new one and is refused at start;
//! * `removed-<id>`: node `<id>` left or was removed; it is never added
//!   again (it would come back with an empty log).
//!
//! Each node also publishes its data dir's cluster id in its
//! [`NodeInfo`] metadata (`catga.cluster`), so that a pristine node can ask
//! the nodes it sees whether they already form a cluster.

mod formation;
mod reconciler;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, DiscoverySource, HeartbeatService, NodeInfo,
};
use crate::error::{Error, Result};

/// The metadata key carrying a node's cluster id (hex; 0 while it has none).
const META_CLUSTER: &str = "catga.cluster";
/// The metadata key carrying a node's data-dir incarnation (hex).
const META_INCARNATION: &str = "catga.incarnation";

/// The builder's self-forming settings, validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) cluster_name: String,
    /// This node's Raft address, as the others reach it.
    pub(crate) advertise: String,
    /// Where users reach this node's API (registered as `NodeInfo::api_addr`).
    pub(crate) api_addr: Option<String>,
    pub(crate) bootstrap_expect: usize,
    pub(crate) voters: usize,
    pub(crate) remove_dead_after: Option<Duration>,
    pub(crate) remove_learners_after: Duration,
    /// How often the registration is renewed (`discovery_timings`).
    pub(crate) renew_every: Duration,
    pub(crate) lease: Duration,
    /// A learner this close to the leader's log is caught up.
    pub(crate) catch_up_lag: u64,
}

impl Settings {
    /// How long the seen nodes must stay the same before bootstrapping.
    fn margin(&self) -> Duration {
        self.renew_every.max(Duration::from_millis(200))
    }

    pub(crate) fn discovery_config(&self) -> DiscoveryConfig {
        DiscoveryConfig::new(self.cluster_name.clone()).timings(self.renew_every, self.lease)
    }
}

/// The running self-forming part of a node.
pub(crate) struct SelfForming {
    discovery: Arc<dyn Discovery>,
    heartbeats: Mutex<Option<HeartbeatService>>,
    tasks: Mutex<JoinSet<()>>,
    stop: CancellationToken,
    cluster_name: String,
    /// What the membership watch last said of each node: its entry, or
    /// `None` once it left (lease expired or unregistered). The liveness,
    /// load and metadata `Node::members` reports.
    seen: Mutex<std::collections::BTreeMap<u64, Option<NodeInfo>>>,
}

impl std::fmt::Debug for SelfForming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfForming")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_hex(what: &str, v: &str) -> Result<u64> {
    u64::from_str_radix(v.trim(), 16).map_err(|e| {
        Error::Discovery(crate::discovery::DiscoveryError::Protocol {
            op: "read record",
            reply: format!("{what} = {v:?}: {e}"),
        })
    })
}

/// The cluster id a node publishes in its metadata (0: none, or unreadable).
fn published_cluster(info: &NodeInfo) -> u64 {
    info.metadata
        .get(META_CLUSTER)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

fn node_record(id: u64) -> String {
    format!("node-{id}")
}

fn removed_record(id: u64) -> String {
    format!("removed-{id}")
}

/// Whether `e` only says that the discovery store cannot be reached now
/// (a member resumes without it).
pub(crate) fn store_unreachable(e: &Error) -> bool {
    matches!(
        e,
        Error::Discovery(DiscoveryError::Unreachable { .. } | DiscoveryError::Store { .. })
    )
}

/// For a member that started while its store was down: connects, checks
/// and registers in the background, retrying until the store is back (or
/// the node shuts down). A check that fails then (another cluster, a
/// replaced data dir, a removed id) stops the node, as it would have at
/// start.
pub(crate) fn register_later(
    node: &Node,
    source: DiscoverySource,
    settings: Settings,
    cause: &Error,
) {
    let stop = node.set_selfform_pending(format!(
        "the discovery store has been unreachable since this node started ({cause}); it \
         serves as a member and registers when the store is back"
    ));
    let weak = node.downgrade();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            let Some(node) = weak.upgrade() else { return };
            let attempt = async {
                let discovery = connect(source.clone(), &settings).await?;
                start(&node, discovery, settings.clone()).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = attempt => r,
            };
            match result {
                Ok(running) => {
                    if let Some(running) = node.finish_selfform(running) {
                        let _ = running.stop(false).await;
                    } else {
                        tracing::info!("the discovery store is back: this node is registered");
                    }
                    return;
                }
                Err(e) if store_unreachable(&e) => {
                    tracing::debug!(error = %e, "the discovery store is still unreachable");
                }
                Err(e) => {
                    tracing::error!(error = %e, "this node's discovery checks failed once the store was back: stopping it");
                    node.shutdown().await;
                    return;
                }
            }
        }
    });
}

/// Connects the discovery store.
pub(crate) async fn connect(
    source: DiscoverySource,
    settings: &Settings,
) -> Result<Arc<dyn Discovery>> {
    Ok(source.connect(settings.discovery_config()).await?)
}

/// Checks this node against the store's records, registers it, starts its
/// heartbeats, and starts the bootstrap (on a pristine node of a cluster not
/// formed yet) and the reconciler.
pub(crate) async fn start(
    node: &Node,
    discovery: Arc<dyn Discovery>,
    settings: Settings,
) -> Result<SelfForming> {
    let raft = node.raft();
    let id = raft.id();
    let name = settings.cluster_name.clone();
    let (mut cluster, incarnation) = raft.data_identity();
    let pristine = raft.pristine().await?;

    let held = discovery
        .create_record(&node_record(id), &hex(incarnation))
        .await?;
    if held != hex(incarnation) {
        let err = format!(
            "node {id} is known to cluster `{name}` with data dir incarnation {held}, and this \
             data dir's is {}: it was wiped or replaced, so it lost its Raft log and must not \
             take node {id}'s place (or another process uses id {id} with another data dir). \
             Start this machine under a new node id (a removed or replaced id is never \
             reused); if node {id} is gone for good, it is removed by `remove_node({id})` on \
             a member",
            hex(incarnation)
        );
        tracing::error!("{err}");
        return Err(Error::ClusterMismatch(err));
    }
    if discovery.read_record(&removed_record(id)).await?.is_some() {
        let err = format!(
            "node id {id} left or was removed from cluster `{name}`; an id is never reused: \
             start this node under a new id with a fresh data dir"
        );
        tracing::error!("{err}");
        return Err(Error::ClusterMismatch(err));
    }
    match discovery.read_record("cluster-id").await? {
        Some(v) => {
            let theirs = parse_hex("cluster-id", &v)?;
            if cluster != 0 && cluster != theirs {
                let err = format!(
                    "this data dir belongs to cluster {}, but cluster `{name}` in the store \
                     is {}: clusters are never merged. Check the cluster name and the data \
                     dir; to move this machine, give it a fresh data dir and a new id",
                    hex(cluster),
                    hex(theirs)
                );
                tracing::error!("{err}");
                return Err(Error::ClusterMismatch(err));
            }
            raft.adopt_cluster(theirs)?;
            cluster = theirs;
        }
        None if cluster != 0 => {
            // the store lost its records (a flushed Redis): put ours back
            let stored = discovery.create_record("cluster-id", &hex(cluster)).await?;
            if stored != hex(cluster) {
                return Err(Error::ClusterMismatch(format!(
                    "cluster `{name}` in the store is {stored}, this data dir's is {}",
                    hex(cluster)
                )));
            }
            tracing::warn!(cluster = %hex(cluster), "the store had no cluster id: restored it");
        }
        None => {}
    }

    let mut info = NodeInfo::new(name.clone(), id, settings.advertise.clone())
        .with_metadata(META_CLUSTER, hex(cluster))
        .with_metadata(META_INCARNATION, hex(incarnation));
    info.api_addr = settings.api_addr.clone();
    let weak = node.downgrade();
    let load_of = weak.clone();
    let load = move || {
        load_of
            .upgrade()
            .map(|n| n.in_flight() as f64)
            .unwrap_or(0.0)
    };
    // only a node with Raft state can have a previous process to take
    // over from (and a first start skips the listing); bounded, so that a
    // slow store costs at most what waiting for the lease would
    if !pristine
        && raft.data_dir_exclusive()
        && let Ok(Some(previous)) =
            tokio::time::timeout(settings.lease, previous_life(&discovery, &info)).await
    {
        // A restart within the lease of this node's previous process: the
        // store still holds the id under that process's incarnation. The
        // holder announced this data dir, and this process holds the dir's
        // lock, so that process is gone (the lock dies with it): this is
        // the same node, and it takes the registration over at once.
        tracing::info!(
            "this node restarted within its previous process's discovery lease: \
             taking its registration over"
        );
        info.incarnation = previous;
    }
    let heartbeats = register(&discovery, info.clone(), load, settings.lease).await?;

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    if pristine && cluster == 0 {
        tasks.spawn(formation::run(
            weak.clone(),
            discovery.clone(),
            settings.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(reconciler::run(
        weak,
        discovery.clone(),
        settings,
        info,
        stop.clone(),
    ));
    Ok(SelfForming {
        discovery,
        heartbeats: Mutex::new(Some(heartbeats)),
        tasks: Mutex::new(tasks),
        stop,
        cluster_name: name,
        seen: Mutex::default(),
    })
}

/// Registers and starts the heartbeats. A process restarted right after a
/// crash finds its id still held by its previous life until that lease
/// passes: when the holder announced this same data dir, wait for it.
async fn register(
    discovery: &Arc<dyn Discovery>,
    info: NodeInfo,
    load: impl Fn() -> f64 + Clone + Send + Sync + 'static,
    lease: Duration,
) -> Result<HeartbeatService> {
    let deadline = tokio::time::Instant::now() + lease.saturating_mul(2);
    loop {
        match HeartbeatService::start(discovery.clone(), info.clone(), load.clone()).await {
            Ok(h) => return Ok(h),
            Err(DiscoveryError::DuplicateId { retry_after, .. })
                if tokio::time::Instant::now() < deadline
                    && held_by_this_data_dir(discovery, &info).await =>
            {
                tracing::info!(
                    ?retry_after,
                    "this node's previous life still holds its id: waiting for its lease"
                );
                tokio::time::sleep(retry_after.clamp(Duration::from_millis(50), lease)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The discovery incarnation of this node's previous process, if the store
/// still holds the id for a process that announced this same data dir.
async fn previous_life(discovery: &Arc<dyn Discovery>, info: &NodeInfo) -> Option<u64> {
    let nodes = discovery.list().await.ok()?;
    nodes
        .iter()
        .find(|n| {
            n.id == info.id
                && n.metadata.contains_key(META_INCARNATION)
                && n.metadata.get(META_INCARNATION) == info.metadata.get(META_INCARNATION)
        })
        .map(|n| n.incarnation)
}

/// Whether the registered holder of this node's id announced the same data
/// dir (its previous process).
async fn held_by_this_data_dir(discovery: &Arc<dyn Discovery>, info: &NodeInfo) -> bool {
    let Ok(nodes) = discovery.list().await else {
        return false;
    };
    nodes.iter().any(|n| {
        n.id == info.id
            && n.metadata.contains_key(META_INCARNATION)
            && n.metadata.get(META_INCARNATION) == info.metadata.get(META_INCARNATION)
    })
}

impl Node {
    /// Notes what the membership watch said of node `id` (`None`: left).
    pub(crate) fn discovery_saw(&self, id: u64, info: Option<NodeInfo>) {
        if let Some(sf) = self.inner.selfform.get() {
            sf.seen.lock().insert(id, info);
        }
    }

    /// What discovery last said of each node, if this node uses discovery.
    pub(crate) fn discovery_view(
        &self,
    ) -> Option<std::collections::BTreeMap<u64, Option<NodeInfo>>> {
        self.inner.selfform.get().map(|sf| sf.seen.lock().clone())
    }
}

impl SelfForming {
    /// Remembers `id` as removed, so that it is never added again.
    pub(crate) async fn mark_removed(&self, id: u64) -> Result<()> {
        self.discovery
            .create_record(&removed_record(id), "removed")
            .await?;
        Ok(())
    }

    /// Stops the bootstrap and the reconciler, and the heartbeats; with
    /// `unregister`, leaves the store gracefully (else the lease expires,
    /// as after a crash).
    pub(crate) async fn stop(&self, unregister: bool) -> Result<()> {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let heartbeats = self.heartbeats.lock().take();
        match heartbeats {
            Some(h) if unregister => h.shutdown().await?,
            Some(h) => drop(h),
            None => {}
        }
        Ok(())
    }
}

/// Retries `discovery.watch()` until it succeeds or `stop` fires.
async fn open_watch(
    discovery: &Arc<dyn Discovery>,
    stop: &CancellationToken,
) -> Option<crate::discovery::MemberWatch> {
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match discovery.watch().await {
            Ok(w) => return Some(w),
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot watch the discovery store; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
