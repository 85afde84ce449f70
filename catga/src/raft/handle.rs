//! [`RaftHandle`]: one running Raft node (log, state machine, transport,
//! event task) and the client side of routing: writes, read indexes and
//! membership changes go to the leader, retried through leader changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Config, SnapshotPolicy};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::compat::{self, Compat};
use super::events::{DeliverySettings, EventLog, event_loop};
use super::forward::Forwarder;
use super::identity::{Identity, static_cluster_id};
use super::log_store::LogStore;
use super::network::{Network, PeerLog};
use super::quiet::{LinkFloor, with_link_floor};
use super::service::{RaftService, Running};
use super::state_machine::SmStore;
use super::status::Readiness;
use super::wire::{Redirect, Rpc, decode, encode};
use super::{Counters, Counts, Raft, RaftState, Status, leader};
use crate::error::{Error, Result, TimeoutReason};
use crate::machine::{Applied, Envelope, Machine};
use crate::transport::{Faults, Mux, PeerCheck, Pool, Server, Service, TransportConfig};

/// Everything needed to start a node; validated by the cluster builder.
pub(crate) struct RaftSettings {
    pub(crate) node_id: u64,
    pub(crate) listen: SocketAddr,
    pub(crate) listener: Option<std::net::TcpListener>,
    pub(crate) advertise: Option<String>,
    pub(crate) members: BTreeMap<u64, String>,
    pub(crate) join: bool,
    pub(crate) data_dir: PathBuf,
    pub(crate) heartbeat_ms: u64,
    pub(crate) election_min_ms: u64,
    pub(crate) election_max_ms: u64,
    pub(crate) snapshot_every: u64,
    pub(crate) keep_logs: u64,
    /// Bytes of the log zero-filled ahead of the writes (`wal::Wal`).
    pub(crate) log_reserve: u64,
    pub(crate) secret: Vec<u8>,
    pub(crate) tls: Option<crate::tls::TlsConfig>,
    pub(crate) max_frame_bytes: usize,
    pub(crate) events: DeliverySettings,
    pub(crate) ready_max_lag: u64,
    /// Who quarantines a poison pill (`raft/poison.rs`).
    pub(crate) quarantine: super::QuarantineMode,
    /// The most voters the leader keeps (odd; `usize::MAX`: no limit), see
    /// `raft/voters.rs`.
    pub(crate) voters: usize,
}

/// openraft's replication backoff policy (`Config::backoff`): from the
/// heartbeat interval, doubling, to at most a third of the election
/// timeout's minimum (never below the heartbeat interval), so a healed
/// link carries appends again well within an election timeout.
fn replication_backoff(heartbeat_ms: u64, election_min_ms: u64) -> String {
    let cap = (election_min_ms / 3).max(heartbeat_ms);
    format!("{heartbeat_ms}ms ...{cap}ms")
}

/// The longest a single attempt (one RPC to the leader, or one local
/// proposal) may take before the call retries.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct RaftHandle {
    id: u64,
    raft: Raft,
    sm: SmStore,
    log: LogStore,
    pool: Pool,
    forwarder: Forwarder,
    background: Mutex<JoinSet<()>>,
    server: Mutex<Option<Server>>,
    events_task: Mutex<Option<JoinHandle<()>>>,
    stop_events: watch::Sender<bool>,
    faults: Faults,
    local_addr: SocketAddr,
    readiness: Readiness,
    compat: Arc<Compat>,
    peers: Arc<PeerLog>,
    counters: Counters,
    /// Set once Raft stopped for good (storage failed): read on every local
    /// query, so an atomic rather than openraft's metrics.
    failed: Arc<std::sync::atomic::AtomicBool>,
    identity: Arc<Identity>,
    mux: Arc<Mux>,
    /// The transport settings, for the pools of other services
    /// ([`Self::new_pool`]).
    transport: Arc<TransportConfig>,
    /// The voter target (`RaftSettings::voters`).
    voters: usize,
}

/// The membership as the leader sees it, in plain values (for the
/// membership reconciler in `node/`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MembershipView {
    /// This node leads (and may change the membership).
    pub(crate) leader: bool,
    pub(crate) voters: BTreeMap<u64, String>,
    pub(crate) learners: BTreeMap<u64, String>,
    /// How many entries each node is behind the leader's last log index
    /// (leader only; a node with nothing replicated yet counts everything).
    pub(crate) lag: BTreeMap<u64, u64>,
}

impl RaftHandle {
    pub(crate) async fn start(s: RaftSettings) -> Result<RaftHandle> {
        let storage =
            |e: std::io::Error| Error::io(format!("data dir {}", s.data_dir.display()), e);
        let cluster = (!s.join).then(|| static_cluster_id(&s.secret, s.members.keys().copied()));
        let identity = Arc::new(Identity::open(&s.data_dir, s.node_id, cluster).map_err(storage)?);
        let peer_check = identity.clone();
        let log = LogStore::open(&s.data_dir, s.log_reserve).map_err(storage)?;
        let events = EventLog::open(&s.data_dir).map_err(|e| {
            log.close();
            storage(e)
        })?;
        let sm = SmStore::open(s.data_dir.clone(), events.clone(), log.clone()).map_err(|e| {
            log.close();
            storage(e)
        })?;

        let faults = Faults::default();
        let tcfg = Arc::new(TransportConfig {
            node_id: s.node_id,
            secret: s.secret.clone(),
            max_frame_bytes: s.max_frame_bytes,
            identity: Some(peer_check as Arc<dyn PeerCheck>),
            tls: s.tls.clone(),
            ..TransportConfig::default()
        });
        let service = RaftService::new();
        let mux = Mux::new(service.clone());
        let server = match s.listener {
            Some(l) => Server::from_std(l, tcfg.clone(), mux.clone(), faults.clone()),
            None => Server::bind(s.listen, tcfg.clone(), mux.clone(), faults.clone()).await,
        };
        let server = server.map_err(|e| {
            log.close();
            Error::Config {
                setting: "listen",
                reason: format!("cannot listen on {}: {e}", s.listen),
            }
        })?;
        let local_addr = server.local_addr();
        let pool = Pool::new(tcfg.clone(), faults.clone());

        let (election_min, lease) =
            openraft_election(s.heartbeat_ms, s.election_min_ms, s.election_max_ms);
        let config = Config {
            cluster_name: "catga".into(),
            heartbeat_interval: s.heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: lease,
            snapshot_policy: if s.snapshot_every == 0 {
                SnapshotPolicy::Never
            } else {
                SnapshotPolicy::LogsSinceLast(s.snapshot_every)
            },
            max_in_snapshot_log_to_keep: s.keep_logs,
            install_snapshot_timeout: 30_000,
            // replicate while the leader's own fsync runs, not after it
            broadcast_submitted_on_append: Some(true),
            // a node that restarts (or returns from a partition) while the
            // leader is healthy asks before it campaigns, instead of
            // bumping the term and deposing the leader
            enable_pre_vote: Some(true),
            // after failed appends a replication stream waits before its
            // next try; openraft's default grows to 1 s, so a peer whose
            // link heals (a silent cut) heard from the leader up to 1 s
            // later. Retry within a third of an election timeout instead
            backoff: replication_backoff(s.heartbeat_ms, s.election_min_ms),
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config {
            setting: "election_timeout / heartbeat_interval",
            reason: e.to_string(),
        })?;
        let compat = match Compat::new(s.node_id, pool.clone()) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                server.shutdown().await;
                log.close();
                return Err(e);
            }
        };
        let peers = Arc::new(PeerLog::default());
        // append deadlines follow the link, and so do openraft's heartbeat
        // timeouts in this node's Raft tasks (see `quiet::LinkFloor`)
        let floor = Arc::new(LinkFloor::default());
        let cap = Duration::from_millis(s.election_min_ms);
        let network = Network::new(pool.clone(), peers.clone(), cap, floor.clone());
        let started = Raft::new(
            s.node_id,
            Arc::new(config),
            network,
            log.clone(),
            sm.clone(),
        );
        let raft = match with_link_floor(floor, started).await {
            Ok(r) => r,
            Err(e) => {
                server.shutdown().await;
                log.close();
                return Err(Error::Raft(format!("starting: {e}")));
            }
        };
        let _ = service.raft.set(Running {
            raft: raft.clone(),
            compat: compat.clone(),
            sm: sm.clone(),
            peers: peers.clone(),
            voters: s.voters,
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let events_task = tokio::spawn(event_loop(s.node_id, events, s.events, stop_rx));

        let mut background = JoinSet::new();
        let forwarder = Forwarder::start(pool.clone(), &mut background);
        background.spawn(capabilities_loop(
            s.node_id,
            raft.clone(),
            compat.clone(),
            sm.clone(),
        ));
        background.spawn(super::poison::watch(
            s.node_id,
            raft.clone(),
            sm.clone(),
            pool.clone(),
            s.quarantine,
        ));
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        background.spawn(watch_failure(raft.clone(), failed.clone()));
        background.spawn(super::identity::record_removals(
            raft.clone(),
            identity.clone(),
        ));
        let handle = RaftHandle {
            id: s.node_id,
            raft,
            sm,
            log,
            pool,
            forwarder,
            background: Mutex::new(background),
            server: Mutex::new(Some(server)),
            events_task: Mutex::new(Some(events_task)),
            stop_events: stop_tx,
            faults,
            local_addr,
            readiness: Readiness::new(
                service.contact.clone(),
                s.ready_max_lag,
                Duration::from_millis(s.election_max_ms.saturating_mul(2)),
                Duration::from_millis(lease),
            ),
            compat,
            peers,
            counters: Counters::default(),
            failed,
            identity,
            mux,
            transport: tcfg,
            voters: s.voters,
        };

        if !s.join {
            let mut members: BTreeMap<u64, BasicNode> = s
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                .collect();
            let me = s
                .advertise
                .clone()
                .unwrap_or_else(|| local_addr.to_string());
            members.insert(s.node_id, BasicNode::new(me));
            let patience = Duration::from_millis(s.election_max_ms * 4);
            handle.bootstrap(members, patience).await?;
        }
        Ok(handle)
    }

    /// Forms a static cluster, only on a pristine log (a node with any Raft
    /// state never initializes). The smallest id initializes at once; every
    /// other member waits `patience` to be contacted and initializes itself
    /// if nobody did, so any majority of the listed members forms the
    /// cluster. openraft allows several members to initialize with the same
    /// membership: the vote elects one leader. A member whose data dir was
    /// wiped may initialize too, but its peers refuse it in the handshake
    /// (see `identity.rs`), so it never votes.
    async fn bootstrap(&self, members: BTreeMap<u64, BasicNode>, patience: Duration) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let raft = self.raft.clone();
        let first = members.keys().next() == Some(&self.id);
        let task = async move {
            if !first {
                let contacted = raft
                    .wait(Some(patience))
                    .metrics(
                        |m| {
                            m.membership_config
                                .membership()
                                .voter_ids()
                                .next()
                                .is_some()
                        },
                        "contacted by a member",
                    )
                    .await;
                if contacted.is_ok() {
                    return;
                }
                tracing::info!(
                    waited = ?patience,
                    "no member contacted this node: initializing the cluster from here"
                );
            }
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "initialize refused (already initialized)");
            }
        };
        if first {
            task.await;
        } else {
            self.background.lock().spawn(task);
        }
        Ok(())
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether this node has no Raft state at all (no membership, no log,
    /// no vote): only such a node may ever initialize a cluster.
    pub(crate) async fn pristine(&self) -> Result<bool> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        Ok(!initialized && m.last_log_index.is_none() && m.current_term == 0)
    }

    /// The cluster id of this data dir (0: none yet) and its incarnation.
    pub(crate) fn data_identity(&self) -> (u64, u64) {
        (self.identity.cluster(), self.identity.incarnation())
    }

    /// No other process uses this data dir (see `identity.rs`, `LOCK`).
    pub(crate) fn data_dir_exclusive(&self) -> bool {
        self.identity.sole_user()
    }

    /// A peer's standing refusal of this node, and a receiver of changes
    /// (see `identity.rs`).
    pub(crate) fn refusal(&self) -> Option<super::identity::Refusal> {
        self.identity.refusal()
    }

    pub(crate) fn watch_refusals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.identity.watch_refusals()
    }

    /// Why this node is no replica, if its peers refuse it (see
    /// `identity.rs`): a peer refused it and no leader accepts it. A node
    /// that hears from a leader serves, whatever another peer says. An
    /// atomic load unless a peer refused it.
    pub(crate) fn refused(&self) -> Option<String> {
        let refusal = self.identity.refusal()?;
        self.refused_given(&self.status(), refusal)
    }

    /// [`Self::refused`], given this node's status and a standing refusal.
    pub(crate) fn refused_given(&self, s: &Status, r: super::identity::Refusal) -> Option<String> {
        if s.leader_confirmed {
            return None;
        }
        let id = self.id;
        Some(format!(
            "node {id} is refused by its peers (node {}: {}). It holds no replica of the \
             cluster's state: it answers no queries and takes no writes. Stop it; remove \
             id {id} from the cluster (`remove_node({id})` on a member, or the admin route) \
             and start this machine under a new id with a fresh data dir \
             (`join_existing()`, then `add_node` on a member)",
            r.by, r.reason
        ))
    }

    /// Whether this node's state may answer reads: not when its Raft
    /// stopped (the state no longer follows the log) or its peers refuse
    /// it (its state is not the cluster's: empty, or another cluster's).
    pub(crate) fn readable(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(Error::Raft(format!(
                "this node stopped ({e}); it answers no reads because its state is no \
                 longer kept up to date: restart it"
            )));
        }
        if let Some(why) = self.refused() {
            return Err(Error::ClusterMismatch(why));
        }
        Ok(())
    }

    /// The peers that stand by a refusal of this node (`identity.rs`).
    pub(crate) fn refusers(&self) -> std::collections::BTreeSet<u64> {
        self.identity.refusers()
    }

    /// Peers refused for coming back with another data dir (`identity.rs`).
    pub(crate) fn replaced_peers(&self) -> std::collections::BTreeSet<u64> {
        self.identity.replaced_peers()
    }

    /// Records the cluster id this (pristine) data dir joins.
    pub(crate) fn adopt_cluster(&self, cluster: u64) -> Result<()> {
        self.identity.adopt(cluster).map_err(Error::ClusterMismatch)
    }

    /// Initializes a new cluster with these voters (id → address); only
    /// for a pristine node, once (see `node/selfform`).
    pub(crate) async fn initialize(&self, voters: BTreeMap<u64, String>) -> Result<()> {
        let members: BTreeMap<u64, BasicNode> = voters
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(format!("initialize: {e}")))
    }

    /// The membership and, on the leader, each node's replication lag.
    pub(crate) fn membership(&self) -> MembershipView {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let addr = |id: &u64| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<u64, String> =
            membership.voter_ids().map(|id| (id, addr(&id))).collect();
        let learners = membership.learner_ids().map(|id| (id, addr(&id))).collect();
        let last = m.last_log_index.map(|l| l + 1).unwrap_or(0);
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(peer, matched)| {
                        let matched = matched.map(|l| l.index + 1).unwrap_or(0);
                        (*peer, last.saturating_sub(matched))
                    })
                    .collect()
            })
            .unwrap_or_default();
        MembershipView {
            leader: m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader,
            voters,
            learners,
            lag,
        }
    }

    /// On the leader: adds `id` as a learner (no waiting for it to catch up).
    pub(crate) async fn add_learner_here(&self, id: u64, addr: String) -> Result<()> {
        redirect_result(leader::add_learner(&self.raft, id, addr).await)
    }

    /// On the leader: makes learner `id` a voter.
    pub(crate) async fn promote_here(&self, ids: Vec<u64>) -> Result<()> {
        redirect_result(leader::promote(&self.raft, ids).await)
    }

    /// On the leader: removes `id` from the membership.
    pub(crate) async fn remove_here(&self, id: u64) -> Result<()> {
        redirect_result(leader::remove_node(&self.raft, id, self.voters).await)
    }

    /// On the leader: makes voter `id` a learner (`retain`: it keeps
    /// receiving the log, so it can be promoted again at once).
    pub(crate) async fn demote_here(&self, id: u64) -> Result<()> {
        let set = [id].into_iter().collect();
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(set), true)
            .await
            .map(|_| ())
            .map_err(|e| Error::Membership(format!("demoting node {id}: {e}")))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A connection pool of its own (connections, reconnect backoff) to
    /// the other nodes, on this node's transport settings and faults: the
    /// mediator's calls never delay or fail Raft's. Its owner shuts it down.
    pub(crate) fn new_pool(&self) -> Pool {
        Pool::new(self.transport.clone(), self.faults.clone())
    }

    /// Serves the mediator's requests on this node's server.
    pub(crate) fn serve_mediator(&self, service: Arc<dyn Service>) {
        self.mux.set_mediator(service);
    }

    /// Every member's (voters' and learners') id and address.
    pub(crate) fn member_addrs(&self) -> BTreeMap<u64, String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Runs `f` on the local state machine (read lock).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Machine) -> R) -> R {
        f(&self.sm.shared.inner.read().machine)
    }

    fn leader(&self) -> Option<(u64, Option<String>)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let l = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.addr.clone());
        Some((l, addr))
    }

    /// Waits until the metrics change or `max` passes (whichever first).
    async fn wait_change(&self, max: Duration) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(max, rx.changed()).await;
    }

    /// Sends `rpc` to the leader (or runs `local` when this node leads),
    /// retrying through leader changes until `timeout`. `refused` makes
    /// the error of a definite refusal by the leader (it differs per call:
    /// a membership change, a quarantine, a write).
    async fn route<T, L, F, R, G>(
        &self,
        timeout: Duration,
        refused: fn(String) -> Error,
        remote: R,
        local: L,
    ) -> Result<T>
    where
        L: Fn(Raft) -> F,
        F: Future<Output = Redirect<T>>,
        R: Fn(u64, String, Duration) -> G,
        G: Future<Output = Redirect<T>>,
    {
        self.route_attempts(timeout, ATTEMPT_TIMEOUT, refused, remote, local)
            .await
    }

    /// [`Self::route`] with attempts of up to `attempt` each.
    async fn route_attempts<T, L, F, R, G>(
        &self,
        timeout: Duration,
        attempt: Duration,
        refused: fn(String) -> Error,
        remote: R,
        local: L,
    ) -> Result<T>
    where
        L: Fn(Raft) -> F,
        F: Future<Output = Redirect<T>>,
        R: Fn(u64, String, Duration) -> G,
        G: Future<Output = Redirect<T>>,
    {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = Duration::from_millis(1);
        // until a leader is known, that is why the call waits
        let mut last = TimeoutReason::NoLeader;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: timeout,
                    reason: last,
                });
            }
            if let Some(e) = self.failure() {
                return Err(Error::Raft(format!(
                    "this node stopped ({e}); restart it: it recovers from its data dir"
                )));
            }
            // One attempt never takes the whole budget: a leader that was cut
            // off must not hold the call until its deadline.
            let remaining = (deadline - now).min(attempt);
            let outcome = match self.leader() {
                None => None,
                Some((l, _)) if l == self.id => {
                    match tokio::time::timeout(remaining, local(self.raft.clone())).await {
                        Ok(r) => Some(r),
                        Err(_) => Some(Redirect::Unknown(
                            "the leader did not commit in time".into(),
                        )),
                    }
                }
                Some((l, Some(addr))) => {
                    // A leader that stalls (SIGSTOP, a long pause) holds the
                    // attempt until its deadline; once this node knows a new
                    // leader, resend there at once (same client id and
                    // sequence: the dedup table makes the resend safe).
                    tokio::select! {
                        r = remote(l, addr, remaining) => Some(r),
                        n = self.leader_moved_from(l) => Some(Redirect::Unknown(format!(
                            "leader changed from {l} to {n} while waiting for it"
                        ))),
                    }
                }
                Some((l, None)) => Some(Redirect::Unknown(format!("no address for leader {l}"))),
            };
            match outcome {
                Some(Redirect::Ok(v)) => return Ok(v),
                Some(Redirect::Failed(e)) => return Err(refused(e)),
                Some(Redirect::NotUpgraded { name, nodes }) => {
                    return Err(Error::NotUpgraded { name, nodes });
                }
                Some(Redirect::NotLeader(_)) => {
                    last = TimeoutReason::Leader {
                        last: "the leader changed".into(),
                    }
                }
                Some(Redirect::Unknown(e)) => last = TimeoutReason::Leader { last: e },
                None => {}
            }
            if self.raft.metrics().borrow_watched().running_state.is_err() {
                return Err(match self.failure() {
                    Some(e) => Error::Raft(format!(
                        "this node stopped ({e}); restart it: it recovers from its data dir"
                    )),
                    None => Error::ShutDown,
                });
            }
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            self.wait_change(wait).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Resolves once this node knows a leader other than `l`.
    async fn leader_moved_from(&self, l: u64) -> u64 {
        let mut rx = self.raft.metrics();
        loop {
            let now = rx.borrow_watched().current_leader;
            if let Some(n) = now.filter(|n| *n != l) {
                return n;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// One RPC to the leader.
    async fn call_leader<T: DeserializeOwned>(
        &self,
        l: u64,
        addr: String,
        rpc: Rpc,
        ttl: Duration,
    ) -> Redirect<T> {
        let body = match encode(&rpc) {
            Ok(b) => b,
            Err(e) => return Redirect::Failed(e),
        };
        match self.pool.call(l, &addr, body, ttl).await {
            Ok(bytes) => match decode::<Redirect<T>>(&bytes) {
                Ok(r) => r,
                Err(e) => Redirect::Unknown(format!("bad reply from {l}: {e}")),
            },
            Err(e) => Redirect::Unknown(format!("leader {l}: {e}")),
        }
    }

    /// Replicates `env` through the leader; retried (with the same client id
    /// and sequence number, so it applies once) until `timeout`.
    ///
    /// Returns once this node has applied the entry too (read your writes:
    /// a local query here after the write sees it), or when `timeout` has
    /// passed since the call if this node lags: the write is committed
    /// either way, so it is never reported as failed.
    ///
    /// `admitted`: when the caller's `send` began, if probing (see
    /// `crate::probe`).
    pub(crate) async fn write(
        &self,
        env: Envelope,
        timeout: Duration,
        admitted: Option<std::time::Instant>,
    ) -> Result<Applied> {
        let deadline = Instant::now() + timeout;
        let applied = self.write_at_leader(env, timeout, admitted).await?;
        let t = crate::probe::start();
        self.wait_applied_until(applied.index, deadline).await;
        crate::probe::since(crate::probe::Stage::ReadYourWrites, t);
        Ok(applied)
    }

    /// Waits until this node has applied `index` (0: nothing to wait for),
    /// `deadline` passes, or the node stops.
    async fn wait_applied_until(&self, index: u64, deadline: Instant) {
        let mut rx = self.sm.shared.applied.subscribe();
        if *rx.borrow() >= index {
            return;
        }
        let stopped = async {
            let mut m = self.raft.metrics();
            while m.borrow_watched().running_state.is_ok() {
                if m.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = rx.wait_for(|a| *a >= index) => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(index, "a write is committed but this node has not applied it yet");
            }
            _ = stopped => {}
        }
    }

    async fn write_at_leader(
        &self,
        env: Envelope,
        timeout: Duration,
        admitted: Option<std::time::Instant>,
    ) -> Result<Applied> {
        self.route(
            timeout,
            // `client_write` refuses only to forward (handled); anything
            // else is the leader's Raft failing
            |e| Error::Raft(format!("the leader could not take the write: {e}")),
            |l, addr, ttl| {
                self.counters
                    .writes_forwarded
                    .fetch_add(1, Ordering::Relaxed);
                self.forwarder.write(l, addr, env.clone(), ttl)
            },
            |raft| {
                self.counters.writes_local.fetch_add(1, Ordering::Relaxed);
                let env = env.clone();
                let compat = self.compat.clone();
                let sm = self.sm.clone();
                async move {
                    let r = leader::write(&raft, &compat, env, admitted).await;
                    if crate::probe::on()
                        && let Some(at) = *sm.shared.answered_at.lock()
                    {
                        crate::probe::record(crate::probe::Stage::AnswerBack, at.elapsed());
                    }
                    r
                }
            },
        )
        .await
    }

    /// Waits until this node has applied every entry committed before the
    /// call (a read index from the leader).
    pub(crate) async fn read_barrier(&self, timeout: Duration) -> Result<()> {
        let read_id = self
            .route(
                timeout,
                |e| Error::Raft(format!("the leader could not serve a read index: {e}")),
                |l, addr, ttl| self.call_leader(l, addr, Rpc::ReadIndex, ttl),
                |raft| async move { leader::read_index(&raft).await },
            )
            .await;
        let read_id = read_id?;
        let mut applied = self.sm.shared.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|a| *a >= read_id.index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) => Err(Error::Timeout {
                waited: timeout,
                reason: TimeoutReason::Applied {
                    index: read_id.index,
                },
            }),
        }
    }

    pub(crate) async fn add_node(&self, id: u64, addr: String, timeout: Duration) -> Result<()> {
        // one attempt lasts as long as the new node progresses (the
        // leader gives up on one that does not)
        self.route_attempts(
            timeout,
            timeout,
            Error::Membership,
            |l, a, ttl| {
                self.call_leader(
                    l,
                    a,
                    Rpc::AddNode {
                        id,
                        addr: addr.clone(),
                    },
                    ttl,
                )
            },
            |raft| {
                let addr = addr.clone();
                let peers = self.peers.clone();
                let voters = self.voters;
                async move { leader::add_node(&raft, &peers, id, addr, voters).await }
            },
        )
        .await
    }

    pub(crate) async fn remove_node(&self, id: u64, timeout: Duration) -> Result<()> {
        self.route(
            timeout,
            Error::Membership,
            |l, a, ttl| self.call_leader(l, a, Rpc::RemoveNode { id }, ttl),
            |raft| async move { leader::remove_node(&raft, id, self.voters).await },
        )
        .await
    }

    /// Waits until this node's view of the cluster changes, or `max` passes.
    pub(crate) async fn changed(&self, max: Duration) {
        self.wait_change(max).await
    }

    /// Waits until this node knows a confirmed leader (see `Status::leader_confirmed`).
    pub(crate) async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if let (Some(l), true) = (st.leader, st.leader_confirmed) {
                return Ok(l);
            }
            if st.state == RaftState::Shutdown
                || self.raft.metrics().borrow_watched().running_state.is_err()
            {
                return Err(Error::ShutDown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: timeout,
                    reason: match st.leader {
                        None => TimeoutReason::NoLeader,
                        Some(l) => TimeoutReason::Leader {
                            last: format!("no heartbeat from leader {l} in this term yet"),
                        },
                    },
                });
            }
            // confirmation arrives with heartbeats, which need not change
            // the metrics: re-check at least every 20 ms
            self.wait_change((deadline - now).min(Duration::from_millis(20)))
                .await;
        }
    }

    /// Waits until this node has applied at least `index`.
    pub(crate) async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut applied = self.sm.shared.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) => Err(Error::Timeout {
                waited: timeout,
                reason: TimeoutReason::Applied { index },
            }),
        }
    }

    pub(crate) async fn trigger_snapshot(&self) -> Result<()> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    pub(crate) async fn trigger_election(&self) -> Result<()> {
        self.raft
            .trigger()
            .elect(false)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// What this node did, for metrics.
    pub(crate) fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            writes_local: c.writes_local.load(Ordering::Relaxed),
            writes_forwarded: c.writes_forwarded.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            handler_panics: self.sm.shared.panics.load(Ordering::Relaxed),
            discovery: c.discovery.each_ref().map(|d| d.load(Ordering::Relaxed)),
        }
    }

    /// Counts a discovery event (0 joined, 1 updated, 2 left).
    pub(crate) fn count_discovery(&self, kind: usize) {
        if let Some(c) = self.counters.discovery.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Why this node's Raft stopped for good (its log or state machine
    /// failed: a full disk, a disk error), if it did; `None` while it runs
    /// and after a shutdown. Cheap while it runs (one atomic load).
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        failure_of(&self.raft.metrics().borrow_watched().running_state)
    }

    /// Resolves when this node's Raft stops: with the failure, or `None`
    /// after a shutdown.
    pub(crate) async fn stopped(&self) -> Option<String> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                if m.running_state.is_err() {
                    return failure_of(&m.running_state);
                }
            }
            if metrics.changed().await.is_err() {
                return self.failure();
            }
        }
    }

    /// This node's view of the cluster, read from openraft's metrics (see
    /// `raft/status.rs` for what `ready` means).
    pub(crate) fn status(&self) -> Status {
        let stalled = self.sm.shared.stall.reason();
        let mut st = self
            .readiness
            .status(self.id, &self.raft, &self.sm.shared.events, stalled);
        if let Some(p) = self.sm.shared.poison.stop() {
            if st.failed.is_none() {
                st.not_ready = Some(format!(
                    "poisoned: stopped before log entry {} (`{}`), which crashed this node {} \
                     times",
                    p.index, p.name, p.died
                ));
            }
            st.ready = false;
            st.poisoned = Some(p);
        }
        st
    }

    /// Quarantines log entry `index`, which every member stops before
    /// (`raft/poison.rs`): the leader asks each for its promise, then
    /// commits the decision.
    pub(crate) async fn skip_poisoned(&self, index: u64, timeout: Duration) -> Result<()> {
        let sm = self.sm.clone();
        let id = self.id;
        self.route(
            timeout,
            Error::Quarantine,
            |l, a, ttl| self.call_leader(l, a, Rpc::Quarantine { index }, ttl),
            |raft| {
                let sm = sm.clone();
                async move { super::poison::propose(id, &raft, &sm, index).await }
            },
        )
        .await
    }

    /// Stops every task this node started.
    pub(crate) async fn shutdown(&self) {
        // stop taking requests first, so nothing reaches a stopped Raft
        let server = self.server.lock().take();
        if let Some(s) = server {
            s.shutdown().await;
        }
        // a stalled apply loop waits for this, or openraft could not stop
        self.sm.halt();
        let _ = self.raft.shutdown().await;
        self.sm.stop_applier();
        let _ = self.stop_events.send(true);
        let task = self.events_task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.pool.shutdown().await;
        let mut bg = std::mem::take(&mut *self.background.lock());
        bg.abort_all();
        while bg.join_next().await.is_some() {}
        self.log.close();
    }
}

/// Sets `failed` once Raft stops for a reason other than a shutdown.
/// openraft's `(election_timeout_min, election_timeout_max)` for a node
/// whose followers should campaign `min..max` ms after they last heard from
/// the leader (`ClusterBuilder::election_timeout`).
///
/// Why not the user's values as they are: openraft 0.10 gives a leader a
/// lease of `election_timeout_max` (a follower refuses to vote while it
/// runs) and starts a follower's campaign a random `election_timeout` *after*
/// the lease, so the defaults 150–300 ms campaigned 450–600 ms after the
/// leader's last heartbeat, and a leader's `kill -9` stopped writes for
/// ~650 ms (`examples/failover`). With a lease of `max / 2` and a timeout
/// of at least `min - max / 2`, the campaign starts inside `min..max` as
/// documented (201–300 ms for the defaults; the lower end never earlier
/// than `max / 2` + one heartbeat). The leader's own lease (it refuses
/// writes once no majority answered within it) shortens the same way.
/// Timings too tight to split (`max` under four heartbeats) go through as
/// they are.
pub(crate) fn openraft_election(heartbeat: u64, min: u64, max: u64) -> (u64, u64) {
    let lease = max / 2;
    if lease < heartbeat + 2 {
        return (min, max);
    }
    (
        min.saturating_sub(lease).clamp(heartbeat + 1, lease - 1),
        lease,
    )
}

async fn watch_failure(raft: Raft, failed: Arc<std::sync::atomic::AtomicBool>) {
    let stopped = raft
        .wait(None)
        .metrics(|m| m.running_state.is_err(), "raft stops")
        .await;
    if let Ok(m) = stopped
        && failure_of(&m.running_state).is_some()
    {
        failed.store(true, Ordering::Relaxed);
    }
}

fn failure_of(r: &std::result::Result<(), openraft::errors::Fatal<super::TC>>) -> Option<String> {
    match r {
        Ok(()) | Err(openraft::errors::Fatal::Stopped) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn redirect_result(r: Redirect<()>) -> Result<()> {
    match r {
        Redirect::Ok(()) => Ok(()),
        // the leader's own call: no longer the leader, it changes nothing
        Redirect::NotLeader(l) => Err(Error::NotNow(format!(
            "this node is no longer the leader (the leader is {l:?}); the change is made by the \
             leader: call it there"
        ))),
        // no answer from its own Raft: the change may still commit
        Redirect::Unknown(e) => Err(Error::Raft(format!(
            "the membership change may or may not take effect ({e}); read the membership, then \
             retry"
        ))),
        Redirect::Failed(e) => Err(Error::Membership(e)),
        Redirect::NotUpgraded { name, nodes } => Err(Error::NotUpgraded { name, nodes }),
    }
}

/// Every [`compat::REFRESH`]: asks the members what they know (so the
/// leader's check is current), and, if this node leads while its apply
/// loop is stopped (`raft/stall.rs`), hands leadership to another voter:
/// a leader that cannot apply cannot answer writes.
async fn capabilities_loop(id: u64, raft: Raft, compat: Arc<Compat>, sm: SmStore) {
    // a member that never answered is asked every REASK_AFTER (writes do
    // not wait for one that Raft does not hear from), everyone every REFRESH
    let mut tick = tokio::time::interval(compat::REASK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if last_refresh.is_some_and(|t| t.elapsed() < compat::REFRESH) {
            compat.ask_unanswered(&raft).await;
            continue;
        }
        last_refresh = Some(std::time::Instant::now());
        compat.refresh(&raft).await;
        if !sm.shared.stall.apply_stopped() {
            continue;
        }
        let other = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.current_leader != Some(id) {
                continue;
            }
            m.membership_config
                .membership()
                .voter_ids()
                .find(|v| *v != id)
        };
        if let Some(to) = other {
            tracing::warn!(
                to,
                "this node cannot apply the log: handing leadership over"
            );
            let _ = raft.trigger().transfer_leader(to).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{openraft_election, replication_backoff};

    #[test]
    fn a_follower_campaigns_inside_the_election_timeout_it_was_given() {
        // openraft campaigns a random [min, max) after a lease of max
        let window = |hb, min, max| {
            let (omin, omax) = openraft_election(hb, min, max);
            assert!(
                omin > hb && omin < omax,
                "openraft's own rules: {omin} {omax}"
            );
            (omax + omin, 2 * omax)
        };
        assert_eq!(window(50, 150, 300), (201, 300));
        for hb in [1u64, 10, 50, 100, 250] {
            for min in [2 * hb + 1, 3 * hb, 500, 1000, 5000] {
                for max in [min + 1, min + 2 * hb, 2 * min, 10 * min] {
                    if max / 2 < hb + 2 {
                        assert_eq!(openraft_election(hb, min, max), (min, max));
                        continue;
                    }
                    let (lo, hi) = window(hb, min, max);
                    assert!(hi <= max, "{hb} {min} {max}: ends at {hi}");
                    assert!(
                        // (a millisecond lost to halving an odd max)
                        lo + 1 >= min || lo == max / 2 + hb + 1,
                        "{hb} {min} {max}: starts at {lo}"
                    );
                }
            }
        }
    }

    /// openraft parses the policy for every timing the builder accepts,
    /// and no delay exceeds a third of the election timeout's minimum.
    #[test]
    fn the_replication_backoff_is_valid_and_stays_under_a_third_of_the_election_timeout() {
        for (hb, emin) in [(50, 150), (50, 300), (1, 3), (100, 250), (1000, 3000)] {
            let policy = replication_backoff(hb, emin);
            let config = openraft::Config {
                heartbeat_interval: hb,
                election_timeout_min: emin,
                election_timeout_max: emin * 2,
                backoff: policy.clone(),
                ..Default::default()
            }
            .validate()
            .unwrap_or_else(|e| panic!("{policy}: {e}"));
            let most = std::time::Duration::from_millis((emin / 3).max(hb));
            let delays: Vec<_> = config.build_backoff().take(20).collect();
            assert!(delays.iter().all(|d| *d <= most), "{policy}: {delays:?}");
        }
    }
}
