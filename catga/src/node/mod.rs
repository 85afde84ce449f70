//! The node: [`Node`], the handle a service holds (send, query, publish,
//! health, membership, shutdown), built by [`ClusterBuilder`].

mod builder;
mod health;
mod leave;
mod members;
mod reply;
mod selfform;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub use builder::{ClusterBuilder, cluster};
pub use health::{Health, Poisoned, Quarantine, Role};
pub(crate) use leave::WeakNode;
pub use reply::Reply;

use crate::error::{Error, Result};
use crate::machine::{Applied, EntryKind, Envelope};
use crate::mediator::Mediator;
use crate::message::{BoxFuture, Consistency, Handled, Publishable, Queryable, Route};
use crate::raft::RaftHandle;

/// The longest idempotency key [`Node::send_keyed`] takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

struct NodeInner {
    raft: Arc<RaftHandle>,
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    /// Bounds the writes this handle has in flight (memory, and the dedup
    /// window the state machine keeps for this client).
    slots: tokio::sync::Semaphore,
    request_timeout: Duration,
    /// The discovery side of a node started with `.discovery(..)`.
    selfform: std::sync::OnceLock<selfform::SelfForming>,
    /// Set while a member that started with its discovery store down
    /// waits for the store: the wait's token (cancelled by `shutdown`) and
    /// why it waits (for `Health::unregistered`).
    selfform_pending: Mutex<Option<(tokio_util::sync::CancellationToken, String)>>,
    mediator: Mediator,
    /// Discovery events the membership watch saw: joined, updated, left.
    discovery_events: [AtomicU64; 3],
}

/// What a node did, read at one moment (for `catga::http`'s metrics).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Writes, retries and handler panics (the Raft side's).
    pub(crate) raft: crate::raft::Counts,
    /// Discovery events seen: joined, updated, left.
    pub(crate) discovery: [u64; 3],
}

/// The longest `add_node` waits for the leader's answer (the leader gives
/// up sooner on a node that does not progress).
const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(600);

/// A running node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.raft.id())
            .field("addr", &self.inner.raft.local_addr())
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// Removes a sequence number from the in-flight set when the call ends,
/// however it ends.
struct InFlight<'a> {
    set: &'a Mutex<BTreeSet<u64>>,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.seq);
    }
}

impl Node {
    pub(super) fn new(raft: RaftHandle, max_in_flight: usize, request_timeout: Duration) -> Node {
        let raft = Arc::new(raft);
        let mediator = Mediator::start(raft.clone(), request_timeout);
        Node {
            inner: Arc::new(NodeInner {
                raft,
                client_id: loop {
                    let id = rand::random::<u64>();
                    if id != 0 {
                        break id;
                    }
                },
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
                slots: tokio::sync::Semaphore::new(max_in_flight),
                request_timeout,
                selfform: std::sync::OnceLock::new(),
                selfform_pending: Mutex::new(None),
                mediator,
                discovery_events: Default::default(),
            }),
        }
    }

    pub(crate) fn mediator(&self) -> &Mediator {
        &self.inner.mediator
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// What this node did (writes proposed here or forwarded, retries,
    /// handler panics, discovery events), for `catga::http`'s metrics.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            raft: self.inner.raft.counts(),
            discovery: self
                .inner
                .discovery_events
                .each_ref()
                .map(|d| d.load(Ordering::Relaxed)),
        }
    }

    /// Counts a discovery event (0 joined, 1 updated, 2 left).
    pub(crate) fn count_discovery(&self, kind: usize) {
        if let Some(c) = self.inner.discovery_events.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Raft side of this node, for the test hooks in [`crate::testing`].
    pub(crate) fn raft(&self) -> &RaftHandle {
        &self.inner.raft
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.raft.id()
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.raft.local_addr()
    }

    /// Sends a command or a query.
    ///
    /// A command is replicated through the leader (forwarded if this node
    /// is a follower) and applied on every node; the result is what its
    /// handler returned. Through leader changes it is retried with the same
    /// client id and sequence number, so it is applied exactly once. The
    /// outer error is the cluster's ([`Error::Timeout`] when no leader could
    /// be reached in time: the command may still be applied, once).
    ///
    /// A query runs on this node's state with no network trip, unless its
    /// type is `#[query(linearizable)]` (see [`Node::query`]) or declares a
    /// route to other nodes (`#[query(route = ...)]`, see [`Routing`](crate::Routing)
    /// and [`Node::send_to`]).
    ///
    /// A local query is answered on the [`Reply`]'s first poll, with no
    /// allocation; everything else is one boxed future.
    pub fn send<M: Handled>(&self, msg: M) -> Reply<'_, M, M::Output> {
        if let Route::Query {
            consistency: Consistency::Local,
            ..
        } = M::ROUTE
            && !crate::mediator::is_routed::<M>()
        {
            return Reply::local(self, msg);
        }
        Reply::boxed(Box::pin(async move {
            match M::ROUTE {
                Route::Command { decode } => {
                    let t = crate::probe::start();
                    let payload = crate::codec::encode_user(M::NAME, &msg)?;
                    crate::probe::since(crate::probe::Stage::Encode, t);
                    let applied = self
                        .submit(EntryKind::Command, M::NAME, payload, None, t)
                        .await?;
                    crate::probe::since(crate::probe::Stage::Total, t);
                    Ok(decode(&applied.response?)?)
                }
                Route::Query { consistency, .. } => self.run_query(msg, consistency).await,
                Route::StatelessQuery { .. } => self.run_query(msg, Consistency::Local).await,
            }
        }))
    }

    /// Sends a command with an idempotency key chosen by the caller: the
    /// command is applied at most once per key, and every later send with
    /// the same key, from any process and through any node, returns the
    /// first outcome (the handler's result, or its error) without applying
    /// it again. Use it to retry after an error whose
    /// [`outcome`](Error::outcome) is [`Outcome::Unknown`](crate::Outcome),
    /// even from a new process.
    ///
    /// Keys live in the replicated dedup table (and in snapshots) for 24 h
    /// of log time after the first one was applied; a retry after that is
    /// a new command. A key is 1 to 1,024 bytes; a different command sent
    /// under a used key gets the first command's outcome (decoded as this
    /// command's output, which may fail with [`Error::Apply`]). Every node
    /// must run a version that knows keys (an older node ignores them).
    /// See the exactly-once guide (`catga/docs/guides/exactly-once.md`).
    pub async fn send_keyed<M: Handled>(
        &self,
        key: impl Into<String>,
        msg: M,
    ) -> Result<M::Output> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::Config {
                setting: "send_keyed",
                reason: format!(
                    "an idempotency key is 1 to {MAX_KEY_BYTES} bytes (this one has {})",
                    key.len()
                ),
            });
        }
        match M::ROUTE {
            Route::Command { decode } => {
                let payload = crate::codec::encode_user(M::NAME, &msg)?;
                let applied = self
                    .submit(EntryKind::Command, M::NAME, payload, Some(key), None)
                    .await?;
                Ok(decode(&applied.response?)?)
            }
            Route::Query { .. } | Route::StatelessQuery { .. } => Err(Error::WrongKind {
                name: M::NAME,
                advice: "is a query: queries change nothing, send it with `send` (no key needed)",
            }),
        }
    }

    /// Runs a query with the given consistency. `Linearizable` first asks the
    /// leader for its commit index and waits until this node has applied it
    /// (so the answer reflects every write acknowledged before the call); it
    /// works on followers too.
    /// A `#[command]` is not a query: `node.query(command, ..)` does not compile.
    pub fn query<M: Queryable>(&self, msg: M, consistency: Consistency) -> Reply<'_, M, M::Output> {
        if consistency == Consistency::Local
            && matches!(M::ROUTE, Route::Query { .. })
            && !crate::mediator::is_routed::<M>()
        {
            return Reply::local(self, msg);
        }
        Reply::boxed(Box::pin(self.run_query(msg, consistency)))
    }

    /// Answers a stateful query from this node's state, now.
    pub(super) fn read_local<M: Handled>(&self, msg: M) -> Result<M::Output> {
        self.inner.raft.readable()?;
        self.inner.raft.read(|m| m.query(msg))
    }

    /// Why this node is no replica, if its peers refuse it (see
    /// `RaftHandle::refused`).
    pub(crate) fn refused(&self) -> Option<String> {
        self.inner.raft.refused()
    }

    /// Resolves once this node is refused (checked again on every change
    /// of its refusals, and every 200 ms while one stands: a leader that
    /// accepted it may go away).
    async fn refused_wait(&self) -> String {
        let mut changes = self.inner.raft.watch_refusals();
        loop {
            if self.inner.raft.refusal().is_some() {
                if let Some(why) = self.refused() {
                    return why;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else if changes.changed().await.is_err() {
                // the node is gone: nothing will refuse it any more
                std::future::pending::<()>().await;
            }
        }
    }

    async fn run_query<M: Handled>(&self, msg: M, consistency: Consistency) -> Result<M::Output> {
        if crate::mediator::is_routed::<M>() {
            return self
                .mediator()
                .routed(msg, consistency, |m| self.run_here(m, consistency))
                .await;
        }
        self.run_here(msg, consistency).await
    }

    /// Runs a query on this node, whatever its declared route.
    pub(crate) async fn run_here<M: Handled>(
        &self,
        msg: M,
        consistency: Consistency,
    ) -> Result<M::Output> {
        match M::ROUTE {
            Route::Query { .. } => {
                if consistency == Consistency::Linearizable {
                    self.inner.raft.readable()?;
                    self.inner
                        .raft
                        .read_barrier(self.inner.request_timeout)
                        .await?;
                }
                self.read_local(msg)
            }
            Route::StatelessQuery { run, .. } => Ok(run(msg).await),
            Route::Command { .. } => Err(Error::WrongKind {
                name: M::NAME,
                advice: "is a command: send it with `send` (it is replicated, not read)",
            }),
        }
    }

    /// Publishes an event: it goes through the log and reaches the event
    /// handlers of every node (at least once).
    pub fn publish<E: Publishable>(&self, event: E) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let payload = crate::codec::encode_user(E::NAME, &event)?;
            self.submit(EntryKind::Event, E::NAME, payload, None, None)
                .await?
                .response?;
            Ok(())
        })
    }

    async fn submit(
        &self,
        kind: EntryKind,
        name: &str,
        payload: Vec<u8>,
        key: Option<String>,
        // when the caller's `send` began, if probing (`crate::probe`)
        admitted: Option<std::time::Instant>,
    ) -> Result<Applied> {
        let inner = &self.inner;
        // a free slot is taken without arming a timer
        let _slot = match inner.slots.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::ShutDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout(inner.request_timeout, inner.slots.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(Error::ShutDown),
                    Err(_) => return Err(Error::Overloaded),
                }
            }
        };
        // The sequence number is taken under the lock that computes the
        // acknowledgement floor: taken outside it, a later number could
        // announce a floor above an earlier one still being sent, and the
        // earlier write would be refused as already acknowledged.
        let (seq, ack_below) = {
            let mut set = inner.in_flight.lock();
            let seq = inner.next_seq.fetch_add(1, Ordering::Relaxed);
            set.insert(seq);
            (seq, set.first().copied().unwrap_or(seq))
        };
        let _guard = InFlight {
            set: &inner.in_flight,
            seq,
        };
        let env = Envelope {
            kind,
            name: name.to_string(),
            payload,
            client: inner.client_id,
            seq,
            ack_below,
            // stamped by the leader when it proposes the entry
            time_ms: 0,
            key,
        };
        if let Some(why) = self.refused() {
            return Err(Error::ClusterMismatch(why));
        }
        // a refused node knows no leader: without this, a write would wait
        // its whole timeout and then blame the majority
        tokio::select! {
            biased;
            r = inner.raft.write(env, inner.request_timeout, admitted) => r,
            why = self.refused_wait() => Err(Error::ClusterMismatch(why)),
        }
    }

    /// Role, term, leader, members, indexes, replication lag and readiness.
    pub fn health(&self) -> Health {
        let status = self.inner.raft.status();
        let refused = self
            .inner
            .raft
            .refusal()
            .and_then(|r| self.inner.raft.refused_given(&status, r));
        let mut h = Health::from(status);
        h.unregistered = self
            .inner
            .selfform_pending
            .lock()
            .as_ref()
            .map(|(_, why)| why.clone());
        if let Some(why) = refused {
            h.ready = false;
            h.not_ready = Some(why.clone());
            h.refused = Some(why);
        }
        h
    }

    /// Resolves when this node stops serving for good: with the error that
    /// stopped its Raft (its storage failed: a full disk, a disk error) or
    /// with [`Error::ShutDown`] after [`Node::shutdown`], or with
    /// [`Error::ClusterMismatch`] when its peers refuse it and it holds none
    /// of the cluster's log (its data dir was wiped, or it belongs to
    /// another cluster) or a majority of the voters refuse it (it was
    /// removed): see [`Health::refused`]. A node whose
    /// storage failed answers no reads or writes any more (reads would be
    /// stale); `main` should exit non-zero so that its supervisor restarts
    /// it (it then recovers from its data dir once the disk has space):
    ///
    /// ```no_run
    /// # async fn run(node: catga::Node) {
    /// tokio::select! {
    ///     e = node.stopped() => {
    ///         eprintln!("node stopped: {e}");
    ///         std::process::exit(1);
    ///     }
    ///     _ = tokio::signal::ctrl_c() => node.shutdown().await,
    /// }
    /// # }
    /// ```
    pub async fn stopped(&self) -> Error {
        tokio::select! {
            stopped = self.inner.raft.stopped() => match stopped {
                Some(e) => Error::Raft(format!(
                    "this node stopped ({e}); restart it: it recovers from its data dir"
                )),
                None => Error::ShutDown,
            },
            why = self.never_serves() => Error::ClusterMismatch(why),
        }
    }

    /// Resolves when this node is refused and either holds nothing of the
    /// cluster's log (it never applied an entry past the initial
    /// membership: a wiped data dir, a node of another cluster) or is
    /// refused by a majority of the voters it knows (its id was removed;
    /// no leader can be elected that accepts it). Nothing but an operator
    /// can change that, so it can never serve under this id.
    async fn never_serves(&self) -> String {
        loop {
            let why = self.refused_wait().await;
            let applied = self.inner.raft.status().applied_index.unwrap_or(0);
            if applied == 0 {
                return why;
            }
            let voters = self.inner.raft.membership().voters;
            let refusing = self
                .inner
                .raft
                .refusers()
                .iter()
                .filter(|id| voters.contains_key(id))
                .count();
            if !voters.is_empty() && refusing * 2 > voters.len() {
                return why;
            }
            // refused by a few, with a history: it may be accepted again
            self.inner.raft.changed(Duration::from_millis(500)).await;
        }
    }

    /// Adds a node to the cluster: it joins as a learner, catches up (a big
    /// state is streamed to it in chunks, for as long as that takes), then
    /// becomes a voter if the voter count stays odd and within
    /// [`ClusterBuilder::voters`]: a fourth node waits as a learner and is
    /// promoted with the next one (or at once, with a voter that a leave
    /// made a learner). Start it first with [`ClusterBuilder::join_existing`].
    ///
    /// If the new node makes no progress catching up for 15 s (it is down,
    /// unreachable, has another secret, or refuses the snapshot), it is
    /// removed from the membership again and the error says why.
    pub async fn add_node(&self, id: u64, addr: impl Into<String>) -> Result<()> {
        let addr = addr.into();
        builder::check_addr(&addr).map_err(|reason| Error::Config {
            setting: "add_node",
            reason,
        })?;
        self.inner
            .raft
            .add_node(
                id,
                addr,
                // the leader decides when the new node stopped progressing
                self.inner.request_timeout.max(ADD_NODE_TIMEOUT),
            )
            .await
    }

    /// Removes a node from the cluster (its id must never be reused). The
    /// voter count stays odd: a caught-up learner takes a removed voter's
    /// place, or else one more voter becomes a learner (five voters, one
    /// removed: three voters and a learner) until a node is added.
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        self.inner
            .raft
            .remove_node(id, self.inner.request_timeout)
            .await
    }

    /// Waits until this node knows a live leader of the current term (itself
    /// acknowledged by a quorum, or one it heard from in this term); returns
    /// its id. A restarted node does not name a leader it only remembers.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        self.inner.raft.wait_leader(timeout).await
    }

    /// Waits until this node is [`Health::ready`] (a member that heard from
    /// a live leader in this term and has caught up with its commit index);
    /// returns the health at that moment.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let h = self.health();
            if h.ready {
                return Ok(h);
            }
            if h.role == Role::Shutdown {
                return Err(Error::ShutDown);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: timeout,
                    reason: crate::error::TimeoutReason::NotReady {
                        why: h.not_ready.unwrap_or_else(|| "no reason given".into()),
                    },
                });
            }
            // readiness also changes with time (a silent leader): re-check
            // at least every 50 ms
            let wait = (deadline - now).min(Duration::from_millis(50));
            self.inner.raft.changed(wait).await;
        }
    }

    /// Waits until this node's view of the cluster (role, term, leader,
    /// members, indexes) changes, or `max` passes.
    pub async fn health_changed(&self, max: Duration) {
        self.inner.raft.changed(max).await
    }

    /// Waits until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        self.inner.raft.wait_applied(index, timeout).await
    }

    /// Reads a state of this node directly.
    pub fn read_state<S: crate::state::State, R>(&self, f: impl FnOnce(&S) -> R) -> Option<R> {
        self.inner.raft.read(|m| m.state::<S>().map(f))
    }

    /// Quarantines log entry `index`, a poison pill (see "Poison pills" in
    /// the operations guide; the lever of [`Quarantine::Manual`]): every
    /// member must stop before it ([`Health::poisoned`]) and none may have
    /// applied it. Each member is asked to promise never to run it on its
    /// own, then the leader commits the decision, and every replica applies
    /// the entry as [`ApplyError::Poisoned`](crate::ApplyError::Poisoned),
    /// so their states stay equal. Fails with [`Error::Quarantine`], naming
    /// the members that stand in the way, and writes nothing, otherwise.
    pub async fn skip_poisoned(&self, index: u64) -> Result<()> {
        self.inner
            .raft
            .skip_poisoned(index, self.inner.request_timeout)
            .await
    }

    /// Takes a snapshot now (and purges the log behind it).
    pub async fn snapshot(&self) -> Result<()> {
        self.inner.raft.trigger_snapshot().await
    }

    /// Stops every task of this node (Raft, transport, event delivery) and
    /// closes its log. Other clones of this handle fail with
    /// [`Error::ShutDown`] afterwards.
    pub async fn shutdown(&self) {
        // under the lock that the late registration sets `selfform` under:
        // either it is set now (and stopped below) or it never will be
        if let Some((pending, _)) = self.inner.selfform_pending.lock().take() {
            pending.cancel();
        }
        if let Some(sf) = self.inner.selfform.get() {
            // heartbeats stop: the lease expires as after a crash (`leave`
            // is the graceful exit)
            let _ = sf.stop(false).await;
        }
        self.inner.mediator.stop().await;
        self.inner.raft.shutdown().await;
    }
}
