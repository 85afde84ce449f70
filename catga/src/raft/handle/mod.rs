//! [`RaftHandle`]: one running Raft node (log, state machine, transport,
//! event task), for the node above it (`node/`), the mediator and the
//! test hooks. Its parts, by audience:
//!
//! - `start`: the steps that start it (storage, transport, openraft's
//!   configuration, Raft, background tasks, bootstrap), with one guard;
//! - `route`: the node API's calls that go to the leader (writes, read
//!   indexes, membership changes, quarantines), retried through leader
//!   changes;
//! - `members`: the membership view and this node's standing in it, for
//!   the membership reconciler and the health;
//! - this file: the handle itself, local reads, status and waits, the
//!   transport for other services (the mediator's), the test hooks, and
//!   the shutdown.

mod members;
mod route;
mod start;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub(crate) use self::members::MembershipView;
use self::route::redirect_result;
pub(crate) use self::start::RaftSettings;
use super::compat::Compat;
use super::forward::Forwarder;
use super::identity::Identity;
use super::log_store::LogStore;
use super::network::PeerLog;
use super::state_machine::SmStore;
use super::status::Readiness;
use super::{Counters, Counts, Raft, RaftState, Status};
use crate::error::{Error, Result, TimeoutReason};
use crate::machine::Machine;
use crate::transport::{Faults, Mux, Pool, Server, Service, TransportConfig};

pub(crate) struct RaftHandle {
    id: u64,
    raft: Raft,
    sm: SmStore,
    log: LogStore,
    /// Raft's connections to the other nodes (appends, votes, forwarded
    /// writes).
    pool: Pool,
    forwarder: Forwarder,
    lifecycle: Lifecycle,
    faults: Faults,
    local_addr: SocketAddr,
    readiness: Readiness,
    compat: Arc<Compat>,
    peers: Arc<PeerLog>,
    counters: Counters,
    /// Set once Raft stopped for good (storage failed): read on every local
    /// query, so an atomic rather than openraft's metrics.
    failed: Arc<AtomicBool>,
    identity: Arc<Identity>,
    mux: Arc<Mux>,
    /// The transport settings, for the pools of other services
    /// ([`Self::new_pool`]).
    transport: Arc<TransportConfig>,
    /// The voter target (`RaftSettings::voters`).
    voters: usize,
}

/// What [`RaftHandle::shutdown`] stops: the server, the event task, the
/// background tasks.
struct Lifecycle {
    background: Mutex<JoinSet<()>>,
    server: Mutex<Option<Server>>,
    events_task: Mutex<Option<JoinHandle<()>>>,
    stop_events: watch::Sender<bool>,
}

impl RaftHandle {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `f` on the local state machine (read lock).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Machine) -> R) -> R {
        f(&self.sm.shared.inner.read().machine)
    }

    /// This node's view of the cluster, read from openraft's metrics (see
    /// `raft/status.rs` for what `ready` means).
    pub(crate) fn status(&self) -> Status {
        let stalled = self.sm.shared.stall.reason();
        let mut st = self.readiness.status(
            self.id,
            &self.raft,
            &self.sm.shared.events,
            stalled,
            *self.sm.shared.applied.borrow(),
        );
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
        core_ended(&self.raft).await;
        failure_of(&self.raft.metrics().borrow_watched().running_state)
    }

    /// Waits until the metrics change or `max` passes (whichever first).
    async fn wait_change(&self, max: Duration) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(max, rx.changed()).await;
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

    /// What this node did, for metrics.
    pub(crate) fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            writes_local: c.writes_local.load(Ordering::Relaxed),
            writes_forwarded: c.writes_forwarded.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            handler_panics: self.sm.shared.panics.load(Ordering::Relaxed),
        }
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

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
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

    /// Stops every task this node started.
    pub(crate) async fn shutdown(&self) {
        // stop taking requests first, so nothing reaches a stopped Raft
        let server = self.lifecycle.server.lock().take();
        if let Some(s) = server {
            s.shutdown().await;
        }
        // a stalled apply loop waits for this, or openraft could not stop
        self.sm.halt();
        let _ = self.raft.shutdown().await;
        self.sm.stop_applier();
        let _ = self.lifecycle.stop_events.send(true);
        let task = self.lifecycle.events_task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.pool.shutdown().await;
        let mut bg = std::mem::take(&mut *self.lifecycle.background.lock());
        bg.abort_all();
        while bg.join_next().await.is_some() {}
        self.log.close();
    }
}

/// Resolves once `raft`'s core has ended (a failure or a shutdown). It
/// watches the server metrics (role, leader, membership), which change
/// rarely and whose channel closes when the core ends, not the full
/// metrics: those are sent again with every write's progress, and a
/// long-lived watcher of them (every node's `stopped()`, in every `main`)
/// would be woken several times per write for nothing.
pub(crate) async fn core_ended(raft: &Raft) {
    let mut server = raft.server_metrics();
    loop {
        if raft.metrics().borrow_watched().running_state.is_err() {
            return;
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}

fn failure_of(r: &std::result::Result<(), openraft::errors::Fatal<super::TC>>) -> Option<String> {
    match r {
        Ok(()) | Err(openraft::errors::Fatal::Stopped) => None,
        Err(e) => Some(e.to_string()),
    }
}
