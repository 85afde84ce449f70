//! Starting a node's Raft side, in steps: storage, transport, openraft's
//! configuration, Raft itself, the background tasks, the bootstrap of a
//! static cluster. What a step opened is closed by one guard
//! ([`Opened`]) if a later step fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, Config, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::super::compat::{self, Compat};
use super::super::events::{DeliverySettings, EventLog, event_loop};
use super::super::forward::Forwarder;
use super::super::identity::{Identity, static_cluster_id};
use super::super::log_store::LogStore;
use super::super::network::{Network, PeerLog};
use super::super::quiet::{LinkFloor, with_link_floor};
use super::super::service::{RaftService, Running};
use super::super::state_machine::SmStore;
use super::super::status::Readiness;
use super::super::{Counters, Raft};
use super::{Lifecycle, RaftHandle, failure_of};
use crate::error::{Error, Result};
use crate::transport::{Faults, Mux, PeerCheck, Pool, Server, TransportConfig};

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
    pub(crate) quarantine: super::super::QuarantineMode,
    /// The most voters the leader keeps (odd; `usize::MAX`: no limit), see
    /// `raft/voters.rs`.
    pub(crate) voters: usize,
}

/// What the steps of a start opened so far; [`Opened::close`] closes it
/// when a later step fails.
#[derive(Default)]
struct Opened {
    log: Option<LogStore>,
    server: Option<Server>,
    raft: Option<Raft>,
}

impl Opened {
    async fn close(self) {
        if let Some(s) = self.server {
            s.shutdown().await;
        }
        if let Some(r) = self.raft {
            let _ = r.shutdown().await;
        }
        if let Some(l) = self.log {
            l.close();
        }
    }
}

/// The node's storage: its identity, log, event log and state machine.
struct Storage {
    identity: Arc<Identity>,
    log: LogStore,
    events: Arc<EventLog>,
    sm: SmStore,
}

/// The node's transport: its server and Raft's connection pool.
struct Transport {
    config: Arc<TransportConfig>,
    faults: Faults,
    mux: Arc<Mux>,
    service: Arc<RaftService>,
    pool: Pool,
    local_addr: SocketAddr,
}

impl RaftHandle {
    pub(crate) async fn start(s: RaftSettings) -> Result<RaftHandle> {
        let mut opened = Opened::default();
        match Self::start_steps(s, &mut opened).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                opened.close().await;
                Err(e)
            }
        }
    }

    async fn start_steps(mut s: RaftSettings, opened: &mut Opened) -> Result<RaftHandle> {
        let store = open_storage(&s, opened)?;
        let listener = s.listener.take();
        let net = open_transport(&s, listener, &store.identity, opened).await?;
        let (config, lease) = raft_config(&s)?;
        let compat = Arc::new(Compat::new(s.node_id, net.pool.clone())?);
        let peers = Arc::new(PeerLog::default());
        // append deadlines follow the link, and so do openraft's heartbeat
        // timeouts in this node's Raft tasks (see `quiet::LinkFloor`)
        let floor = Arc::new(LinkFloor::default());
        let cap = Duration::from_millis(s.election_min_ms);
        let network = Network::new(net.pool.clone(), peers.clone(), cap, floor.clone());
        let started = Raft::new(
            s.node_id,
            Arc::new(config),
            network,
            store.log.clone(),
            store.sm.clone(),
        );
        let raft = with_link_floor(floor, started)
            .await
            .map_err(|e| Error::Raft(format!("starting: {e}")))?;
        opened.raft = Some(raft.clone());
        let _ = net.service.raft.set(Running {
            raft: raft.clone(),
            compat: compat.clone(),
            sm: store.sm.clone(),
            peers: peers.clone(),
            voters: s.voters,
        });

        let mut background = JoinSet::new();
        if !s.join {
            let me = s
                .advertise
                .clone()
                .unwrap_or_else(|| net.local_addr.to_string());
            let mut members = s.members.clone();
            members.insert(s.node_id, me);
            let patience = Duration::from_millis(s.election_max_ms * 4);
            bootstrap(s.node_id, &raft, members, patience, &mut background).await?;
        }

        // nothing below fails: what was opened now belongs to the handle
        let (stop_events, stop_rx) = watch::channel(false);
        let events_task = tokio::spawn(event_loop(s.node_id, store.events, s.events, stop_rx));
        let forwarder = Forwarder::start(net.pool.clone(), &mut background);
        background.spawn(capabilities_loop(
            s.node_id,
            raft.clone(),
            compat.clone(),
            store.sm.clone(),
        ));
        background.spawn(super::super::poison::watch(
            s.node_id,
            raft.clone(),
            store.sm.clone(),
            net.pool.clone(),
            s.quarantine,
        ));
        let failed = Arc::new(AtomicBool::new(false));
        background.spawn(watch_failure(raft.clone(), failed.clone()));
        background.spawn(super::super::identity::record_removals(
            raft.clone(),
            store.identity.clone(),
        ));
        let server = opened.server.take();
        opened.raft = None;
        opened.log = None;
        Ok(RaftHandle {
            id: s.node_id,
            raft,
            sm: store.sm,
            log: store.log,
            pool: net.pool,
            forwarder,
            lifecycle: Lifecycle {
                background: Mutex::new(background),
                server: Mutex::new(server),
                events_task: Mutex::new(Some(events_task)),
                stop_events,
            },
            faults: net.faults,
            local_addr: net.local_addr,
            readiness: Readiness::new(
                net.service.contact.clone(),
                s.ready_max_lag,
                Duration::from_millis(s.election_max_ms.saturating_mul(2)),
                Duration::from_millis(lease),
            ),
            compat,
            peers,
            counters: Counters::default(),
            failed,
            identity: store.identity,
            mux: net.mux,
            transport: net.config,
            voters: s.voters,
        })
    }
}

/// Opens the data dir: identity (and its lock), log, event log, state
/// machine.
fn open_storage(s: &RaftSettings, opened: &mut Opened) -> Result<Storage> {
    let storage = |e: std::io::Error| Error::io(format!("data dir {}", s.data_dir.display()), e);
    let cluster = (!s.join).then(|| static_cluster_id(&s.secret, s.members.keys().copied()));
    let identity = Arc::new(Identity::open(&s.data_dir, s.node_id, cluster).map_err(storage)?);
    let log = LogStore::open(&s.data_dir, s.log_reserve).map_err(storage)?;
    opened.log = Some(log.clone());
    let events = EventLog::open(&s.data_dir).map_err(storage)?;
    let sm = SmStore::open(s.data_dir.clone(), events.clone(), log.clone()).map_err(storage)?;
    Ok(Storage {
        identity,
        log,
        events,
        sm,
    })
}

/// Binds (or takes) the listener and makes Raft's connection pool.
async fn open_transport(
    s: &RaftSettings,
    listener: Option<std::net::TcpListener>,
    identity: &Arc<Identity>,
    opened: &mut Opened,
) -> Result<Transport> {
    let faults = Faults::default();
    let config = Arc::new(TransportConfig {
        node_id: s.node_id,
        secret: s.secret.clone(),
        max_frame_bytes: s.max_frame_bytes,
        identity: Some(identity.clone() as Arc<dyn PeerCheck>),
        tls: s.tls.clone(),
        ..TransportConfig::default()
    });
    let service = RaftService::new();
    let mux = Mux::new(service.clone());
    let server = match listener {
        Some(l) => Server::from_std(l, config.clone(), mux.clone(), faults.clone()),
        None => Server::bind(s.listen, config.clone(), mux.clone(), faults.clone()).await,
    }
    .map_err(|e| Error::Config {
        setting: "listen",
        reason: format!("cannot listen on {}: {e}", s.listen),
    })?;
    let local_addr = server.local_addr();
    opened.server = Some(server);
    let pool = Pool::new(config.clone(), faults.clone());
    Ok(Transport {
        config,
        faults,
        mux,
        service,
        pool,
        local_addr,
    })
}

/// openraft's configuration from the settings, and the leader lease (ms).
fn raft_config(s: &RaftSettings) -> Result<(Config, u64)> {
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
    Ok((config, lease))
}

/// Forms a static cluster (`members`: id → address, this node included),
/// only on a pristine log (a node with any Raft state never initializes).
/// The smallest id initializes at once; every other member waits
/// `patience` to be contacted and initializes itself (in a `background`
/// task) if nobody did, so any majority of the listed members forms the
/// cluster. openraft allows several members to initialize with the same
/// membership: the vote elects one leader. A member whose data dir was
/// wiped may initialize too, but its peers refuse it in the handshake (see
/// `identity.rs`), so it never votes.
async fn bootstrap(
    id: u64,
    raft: &Raft,
    members: BTreeMap<u64, String>,
    patience: Duration,
    background: &mut JoinSet<()>,
) -> Result<()> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = members
        .into_iter()
        .map(|(id, addr)| (id, BasicNode::new(addr)))
        .collect();
    let raft = raft.clone();
    let first = members.keys().next() == Some(&id);
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
        background.spawn(task);
    }
    Ok(())
}

/// openraft's replication backoff policy (`Config::backoff`): from the
/// heartbeat interval, doubling, to at most a third of the election
/// timeout's minimum (never below the heartbeat interval), so a healed
/// link carries appends again well within an election timeout.
fn replication_backoff(heartbeat_ms: u64, election_min_ms: u64) -> String {
    let cap = (election_min_ms / 3).max(heartbeat_ms);
    format!("{heartbeat_ms}ms ...{cap}ms")
}

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

/// Sets `failed` once Raft stops for a reason other than a shutdown.
async fn watch_failure(raft: Raft, failed: Arc<AtomicBool>) {
    super::core_ended(&raft).await;
    if failure_of(&raft.metrics().borrow_watched().running_state).is_some() {
        failed.store(true, Ordering::Relaxed);
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
