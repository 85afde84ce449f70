//! Prometheus metrics of the HTTP layer and the node's Raft view, in the
//! OpenMetrics text format (`prometheus-client`).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Counts;
use crate::node::{Health, Role};

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

pub(super) struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    role: Family<Labels, Gauge>,
    term: Gauge,
    last_log: Gauge,
    applied: Gauge,
    snapshot: Gauge,
    ready: Gauge,
    lost_quorum: Gauge,
    failed: Gauge,
    commit: Gauge,
    lag: Family<Labels, Gauge>,
    event_lag: Gauge,
    writes: Family<Labels, Counter>,
    retries: Counter,
    panics: Counter,
    discovery: Family<Labels, Counter>,
    /// The node's counts at the last render (counters move by the delta).
    last: Mutex<Counts>,
    /// The request counter and latency histogram of each (message, kind,
    /// status) seen, found by the `'static` names: the families' own
    /// lookup takes labels of owned strings, five allocations a request.
    handles: RwLock<HashMap<RequestKey, (Counter, Histogram)>>,
}

type RequestKey = (&'static str, &'static str, u16);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("catga")),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            role: Family::default(),
            term: Gauge::default(),
            last_log: Gauge::default(),
            applied: Gauge::default(),
            snapshot: Gauge::default(),
            ready: Gauge::default(),
            lost_quorum: Gauge::default(),
            failed: Gauge::default(),
            commit: Gauge::default(),
            lag: Family::default(),
            event_lag: Gauge::default(),
            writes: Family::default(),
            retries: Counter::default(),
            panics: Counter::default(),
            discovery: Family::default(),
            last: Mutex::new(Counts::default()),
            handles: RwLock::new(HashMap::new()),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "http_requests",
                "HTTP requests by message, kind and status",
                m.requests.clone(),
            );
            r.register(
                "http_request_seconds",
                "HTTP request latency by message and kind",
                m.latency.clone(),
            );
            r.register(
                "role",
                "1 for this node's current Raft role",
                m.role.clone(),
            );
            r.register("term", "the current Raft term", m.term.clone());
            r.register(
                "last_log_index",
                "the last index in this node's log",
                m.last_log.clone(),
            );
            r.register(
                "applied_index",
                "the last index applied here",
                m.applied.clone(),
            );
            r.register(
                "snapshot_index",
                "the last index in this node's snapshot",
                m.snapshot.clone(),
            );
            r.register("ready", "1 when this node is ready", m.ready.clone());
            r.register(
                "lost_quorum",
                "1 when this node leads but has not heard from a majority within an election \
                 timeout (cut off: it acknowledges no write)",
                m.lost_quorum.clone(),
            );
            r.register(
                "replication_lag",
                "on the leader: entries each follower is behind",
                m.lag.clone(),
            );
            r.register(
                "failed",
                "1 when this node's storage failed and it stopped (restart it)",
                m.failed.clone(),
            );
            r.register(
                "leader_commit_index",
                "the commit index of the leader this node follows, as last heard",
                m.commit.clone(),
            );
            r.register(
                "event_lag",
                "applied entries whose events still wait for this node's handlers",
                m.event_lag.clone(),
            );
            r.register(
                "write_attempts",
                "write attempts by this node: proposed here as the leader (local) or \
                 forwarded to the leader (forwarded)",
                m.writes.clone(),
            );
            r.register(
                "retries",
                "attempts of a call after its first (leader changes, timeouts)",
                m.retries.clone(),
            );
            r.register(
                "discovery_events",
                "discovery events this node's membership watch saw, by kind (self-forming \
                 clusters)",
                m.discovery.clone(),
            );
            r.register(
                "handler_panics",
                "command handlers that panicked, as applied on this node",
                m.panics.clone(),
            );
        }
        m
    }

    pub(super) fn request(
        &self,
        message: &'static str,
        kind: &'static str,
        status: u16,
        took: Duration,
    ) {
        let key = (message, kind, status);
        let found = self.handles.read().get(&key).cloned();
        let (count, latency) = match found {
            Some(handles) => handles,
            None => {
                let handles = (
                    self.requests
                        .get_or_create(&vec![
                            ("message".to_string(), message.to_string()),
                            ("kind".to_string(), kind.to_string()),
                            ("status".to_string(), status.to_string()),
                        ])
                        .clone(),
                    self.latency
                        .get_or_create(&vec![
                            ("message".to_string(), message.to_string()),
                            ("kind".to_string(), kind.to_string()),
                        ])
                        .clone(),
                );
                self.handles.write().insert(key, handles.clone());
                handles
            }
        };
        count.inc();
        latency.observe(took.as_secs_f64());
    }

    /// The text exposition, with the Raft gauges read from `h` now.
    pub(super) fn render(&self, h: &Health, counts: Counts) -> Result<String, String> {
        {
            let mut last = self.last.lock();
            let route = |name: &str| vec![("route".to_string(), name.to_string())];
            self.writes.get_or_create(&route("local")).inc_by(
                counts
                    .raft
                    .writes_local
                    .saturating_sub(last.raft.writes_local),
            );
            self.writes.get_or_create(&route("forwarded")).inc_by(
                counts
                    .raft
                    .writes_forwarded
                    .saturating_sub(last.raft.writes_forwarded),
            );
            self.retries
                .inc_by(counts.raft.retries.saturating_sub(last.raft.retries));
            self.panics.inc_by(
                counts
                    .raft
                    .handler_panics
                    .saturating_sub(last.raft.handler_panics),
            );
            for (i, kind) in ["joined", "updated", "left"].iter().enumerate() {
                self.discovery
                    .get_or_create(&vec![("kind".to_string(), kind.to_string())])
                    .inc_by(counts.discovery[i].saturating_sub(last.discovery[i]));
            }
            *last = counts;
        }
        for r in [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::Learner,
            Role::Shutdown,
        ] {
            let labels = vec![("role".to_string(), format!("{r:?}").to_lowercase())];
            self.role.get_or_create(&labels).set(i64::from(h.role == r));
        }
        let n = |v: Option<u64>| v.map(|v| v as i64).unwrap_or(-1);
        self.term.set(h.term as i64);
        self.last_log.set(n(h.last_log_index));
        self.applied.set(n(h.applied_index));
        self.snapshot.set(n(h.snapshot_index));
        self.ready.set(i64::from(h.ready));
        self.lost_quorum.set(i64::from(h.lost_quorum));
        self.failed.set(i64::from(h.failed.is_some()));
        self.commit.set(n(h.leader_commit_index));
        self.event_lag.set(h.event_lag as i64);
        self.lag.clear();
        for (peer, lag) in &h.replication_lag {
            self.lag
                .get_or_create(&vec![("peer".to_string(), peer.to_string())])
                .set(*lag as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry.lock()).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
