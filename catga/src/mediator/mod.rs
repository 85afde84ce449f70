//! The distributed mediator: who the members are ([`Member`]), a query sent
//! to a chosen node ([`Node::send_to`](crate::Node::send_to)), queries routed by the route their
//! type declares (`#[query(route = ...)]`), and a best-effort broadcast of
//! an event ([`Node::broadcast`](crate::Node::broadcast)). It has its own RPC service beside Raft's
//! on the authenticated transport (`transport/mux.rs`), and pings the
//! members for their liveness and load (not Raft's heartbeat, nor the
//! discovery store's lease renewal).
//!
//! Inside: `route` chooses nodes (pure logic), `wire` is the RPC format,
//! `service` answers other nodes, this file is the caller's side and the
//! pings.

mod route;
mod service;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::route::Load;
use self::service::{Busy, MediatorService};
use self::wire::{Failure, Reply, Request};
use crate::discovery::NodeInfo;
use crate::error::{ApplyError, Error, Result, TimeoutReason};
use crate::message::{Consistency, Handled, Route, Routing};
use crate::raft::RaftHandle;
use crate::transport::{Pool, TransportError, mediator_body};

/// How often each node pings every other member.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A member that has not answered a ping for this long is suspect.
const SUSPECT_AFTER: Duration = Duration::from_millis(1_000);
/// How long a ping may take: longer than the pool's longest reconnect
/// backoff (1 s) plus a typical handshake, so that a ping that waits for
/// the backoff usually sees the reconnect through (a connect attempt runs
/// on its own time either way: one that outlasts the ping serves the next
/// one). A ping that hangs still makes its node suspect after
/// `SUSPECT_AFTER`.
const PING_TIMEOUT: Duration = Duration::from_millis(3_500);
/// How long a member removed from the cluster is still listed (as left).
const LEFT_KEPT: Duration = Duration::from_secs(300);

/// A member's role in the Raft cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// The leader this node knows of.
    Leader,
    /// A voter that is not the leader (or a candidate, during an election).
    Follower,
    /// A non-voting member catching up.
    Learner,
    /// No longer in the membership (its liveness is [`Liveness::Left`]).
    Removed,
}

/// Whether a member answers, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// It answered the last ping, within the last second (or has not been
    /// asked yet and nothing says otherwise). This node always is.
    Alive,
    /// Its last ping or call failed, or it has not answered for a second:
    /// routed queries avoid it.
    Suspect,
    /// Removed from the cluster.
    Left,
}

/// One member of the cluster, as [`Node::members`](crate::Node::members) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// The address it listens on for other nodes.
    pub addr: String,
    /// Where users reach its HTTP API, if it says so
    /// ([`api_addr`](crate::ClusterBuilder::api_addr)): from discovery, or
    /// from its answer to this node's last ping (`None` until then, or if
    /// it sets none, or runs a catga that does not tell).
    pub api_addr: Option<String>,
    /// Its role in Raft.
    pub role: MemberRole,
    /// Whether it answers.
    pub liveness: Liveness,
    /// Requests its mediator is serving (queries and broadcasts from other
    /// nodes), as of its last ping (now, for this node).
    pub load: u64,
    /// What it says about itself ([`Node::set_metadata`](crate::Node::set_metadata)).
    pub metadata: BTreeMap<String, String>,
    /// Milliseconds since it last answered this node (`None`: never; `0`
    /// for this node).
    pub last_seen_ms: Option<u64>,
}

/// One node's outcome of a [`Node::broadcast`](crate::Node::broadcast).
#[derive(Debug)]
pub struct Delivery {
    /// The node.
    pub node: u64,
    /// How many of its handlers of the event ran, or why it could not run
    /// them ([`Error::NodeUnavailable`] when it could not be reached).
    pub result: Result<u32>,
}

#[derive(Debug, Default)]
struct Peer {
    last_ok: Option<Instant>,
    failures: u32,
    load: u64,
    metadata: BTreeMap<String, String>,
    api_addr: Option<String>,
    /// When it was found removed from the membership.
    left_at: Option<Instant>,
}

/// The mediator of one node: what it knows of the others, its own load
/// and metadata, its connection pool and its ping task. Cheap to
/// clone (every clone is the same mediator).
///
/// It holds what it needs of its node and nothing more: the node's Raft
/// side (the member list, the local state and read index, the transport
/// it serves on) and the request timeout. The node's public API over it
/// (`members`, `send_to`, `broadcast`, ...) lives in `node/`.
#[derive(Clone)]
pub(crate) struct Mediator(Arc<Shared>);

struct Shared {
    raft: Arc<RaftHandle>,
    /// Its own connections to the other nodes (not Raft's).
    pool: Pool,
    request_timeout: Duration,
    serving: AtomicU64,
    turn: AtomicU64,
    peers: Mutex<HashMap<u64, Peer>>,
    loads: Mutex<HashMap<u64, Load>>,
    metadata: Mutex<BTreeMap<String, String>>,
    /// Where users reach this node's API (set once, at start).
    api_addr: std::sync::OnceLock<String>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Mediator {
    /// Serves other nodes' mediator requests on this node's server and
    /// starts pinging the members (both end with [`Self::stop`], or when the
    /// mediator is dropped).
    pub(crate) fn start(raft: Arc<RaftHandle>, request_timeout: Duration) -> Mediator {
        let shared = Arc::new(Shared {
            pool: raft.new_pool(),
            raft,
            request_timeout,
            serving: AtomicU64::new(0),
            turn: AtomicU64::new(0),
            peers: Mutex::default(),
            loads: Mutex::default(),
            metadata: Mutex::default(),
            api_addr: std::sync::OnceLock::new(),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        shared.raft.serve_mediator(Arc::new(MediatorService {
            mediator: weak.clone(),
        }));
        *shared.task.lock() = Some(tokio::spawn(ping_members(weak)));
        Mediator(shared)
    }

    /// Stops the pings and closes the connections.
    pub(crate) async fn stop(&self) {
        if let Some(t) = self.0.task.lock().take() {
            t.abort();
        }
        self.0.pool.shutdown().await;
    }

    fn id(&self) -> u64 {
        self.0.raft.id()
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.serving.load(Ordering::Relaxed)
    }

    pub(crate) fn busy(&self) -> Busy<'_> {
        self.0.serving.fetch_add(1, Ordering::Relaxed);
        Busy(&self.0.serving)
    }

    pub(crate) fn metadata(&self) -> BTreeMap<String, String> {
        self.0.metadata.lock().clone()
    }

    pub(crate) fn set_metadata(&self, metadata: BTreeMap<String, String>) {
        *self.0.metadata.lock() = metadata;
    }

    pub(crate) fn api_addr(&self) -> Option<String> {
        self.0.api_addr.get().cloned()
    }

    /// Sets this node's API address (the builder's, at start).
    pub(crate) fn set_api_addr(&self, addr: String) {
        let _ = self.0.api_addr.set(addr);
    }

    fn liveness(&self, id: u64, now: Instant) -> Liveness {
        let peers = self.0.peers.lock();
        match peers.get(&id) {
            None => Liveness::Alive,
            Some(p) if p.left_at.is_some() => Liveness::Left,
            Some(p) if p.failures > 0 => Liveness::Suspect,
            Some(p) => match p.last_ok {
                Some(t) if now.saturating_duration_since(t) > SUSPECT_AFTER => Liveness::Suspect,
                _ => Liveness::Alive,
            },
        }
    }

    fn record(&self, id: u64, ok: bool) {
        let mut peers = self.0.peers.lock();
        let p = peers.entry(id).or_default();
        if ok {
            p.last_ok = Some(Instant::now());
            p.failures = 0;
        } else {
            p.failures = p.failures.saturating_add(1);
        }
    }
}

/// Every [`PING_EVERY`]: pings every other member (their load, metadata and
/// liveness) and notes the members that left. Each ping runs on its own, so
/// a member that hangs delays nobody else's; a member is not pinged again
/// while its last ping is out. Ends when the mediator is gone (the pings
/// with it: they are owned here).
async fn ping_members(mediator: Weak<Shared>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings: tokio::task::JoinSet<u64> = tokio::task::JoinSet::new();
    let mut out: std::collections::HashSet<u64> = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        while let Some(done) = pings.try_join_next() {
            if let Ok(id) = done {
                out.remove(&id);
            }
        }
        let Some(med) = mediator.upgrade().map(Mediator) else {
            return;
        };
        let me = med.id();
        let addrs = med.0.raft.member_addrs();
        {
            let now = Instant::now();
            let mut peers = med.0.peers.lock();
            for (id, p) in peers.iter_mut() {
                if addrs.contains_key(id) {
                    p.left_at = None;
                } else if p.left_at.is_none() {
                    p.left_at = Some(now);
                }
            }
            peers.retain(|_, p| p.left_at.is_none_or(|t| now - t < LEFT_KEPT));
        }
        let body = match wire::encode(&Request::Ping) {
            Ok(b) => mediator_body(&b),
            Err(_) => continue,
        };
        for (id, addr) in addrs {
            if id == me || !out.insert(id) {
                continue;
            }
            let med = med.clone();
            let body = body.clone();
            pings.spawn(async move {
                let r = med.0.pool.call(id, &addr, body, PING_TIMEOUT).await;
                let pong = r.ok().and_then(|b| wire::decode::<Reply>(&b).ok());
                match pong {
                    Some(Reply::Pong {
                        load,
                        metadata,
                        api_addr,
                    }) => {
                        med.record(id, true);
                        if let Some(p) = med.0.peers.lock().get_mut(&id) {
                            p.load = load;
                            p.metadata = metadata;
                            p.api_addr = api_addr;
                        }
                    }
                    _ => med.record(id, false),
                }
                id
            });
        }
    }
}

/// Decodes a query's answer from another node.
type AnswerDecoder<O> = fn(&[u8]) -> Result<O, ApplyError>;

/// The routing of a query type and the decoder of its answer from another
/// node (`None` for a command).
fn remote_of<M: Handled>() -> Option<(Routing<M>, AnswerDecoder<M::Output>)> {
    match M::ROUTE {
        Route::Query { remote, .. } | Route::StatelessQuery { remote, .. } => {
            Some((remote.routing, remote.decode))
        }
        Route::Command { .. } => None,
    }
}

/// Whether a query type is routed away from the calling node.
pub(crate) fn is_routed<M: Handled>() -> bool {
    remote_of::<M>().is_some_and(|(r, _)| r.is_remote())
}

fn unavailable(node: u64, reason: impl Into<String>) -> Error {
    Error::NodeUnavailable {
        node,
        reason: reason.into(),
    }
}

fn from_failure(node: u64, f: Failure) -> Error {
    match f {
        Failure::Apply(a) => Error::Apply(a),
        Failure::Unavailable(r) => unavailable(node, r),
    }
}

impl Mediator {
    /// Every member as this node sees it, sorted by id, with the members
    /// removed lately (see `Node::members`). `discovered`: what discovery
    /// last said of each node, if this node uses discovery.
    pub(crate) fn members(
        &self,
        discovered: Option<BTreeMap<u64, Option<NodeInfo>>>,
    ) -> Vec<Member> {
        let status = self.0.raft.status();
        let addrs = self.0.raft.member_addrs();
        let me = self.id();
        let now = Instant::now();
        let mut out: Vec<Member> = addrs
            .iter()
            .map(|(&id, addr)| {
                let role = if status.leader == Some(id) {
                    MemberRole::Leader
                } else if status.learners.contains(&id) {
                    MemberRole::Learner
                } else {
                    MemberRole::Follower
                };
                if id == me {
                    return self.me(role, addr.clone());
                }
                let peers = self.0.peers.lock();
                let p = peers.get(&id);
                Member {
                    id,
                    addr: addr.clone(),
                    api_addr: p.and_then(|p| p.api_addr.clone()),
                    role,
                    liveness: Liveness::Alive,
                    load: p.map_or(0, |p| p.load),
                    metadata: p.map(|p| p.metadata.clone()).unwrap_or_default(),
                    last_seen_ms: p
                        .and_then(|p| p.last_ok)
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                }
            })
            .collect();
        for m in &mut out {
            if m.id != me {
                m.liveness = self.liveness(m.id, now);
                if m.liveness == Liveness::Left {
                    m.liveness = Liveness::Alive;
                }
                match discovered.as_ref().map(|d| d.get(&m.id)) {
                    // not using discovery, or the store has not said yet
                    None | Some(None) => {}
                    // alive while its entry is in the store, unless its
                    // pings fail (a crash shows before the lease runs out)
                    Some(Some(Some(info))) => {
                        m.load = info.load.max(0.0) as u64;
                        if info.api_addr.is_some() {
                            m.api_addr = info.api_addr.clone();
                        }
                        for (k, v) in &info.metadata {
                            m.metadata.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                    Some(Some(None)) => m.liveness = Liveness::Suspect,
                }
            }
        }
        let peers = self.0.peers.lock();
        for (&id, p) in peers.iter().filter(|(_, p)| p.left_at.is_some()) {
            if addrs.contains_key(&id) {
                continue;
            }
            out.push(Member {
                id,
                addr: String::new(),
                api_addr: p.api_addr.clone(),
                role: MemberRole::Removed,
                liveness: Liveness::Left,
                load: 0,
                metadata: p.metadata.clone(),
                last_seen_ms: p
                    .last_ok
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            });
        }
        out.sort_by_key(|m| m.id);
        out
    }

    /// This node as a member, in `role`, listening on `addr`.
    pub(crate) fn me(&self, role: MemberRole, addr: String) -> Member {
        Member {
            id: self.id(),
            addr,
            api_addr: self.api_addr(),
            role,
            liveness: Liveness::Alive,
            load: self.load(),
            metadata: self.metadata(),
            last_seen_ms: Some(0),
        }
    }

    /// One query to another node's mediator, until `deadline`; the encoded
    /// answer.
    pub(crate) async fn query_on(
        &self,
        node: u64,
        name: &str,
        payload: Vec<u8>,
        consistency: Consistency,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let req = Request::Query {
            name: name.to_string(),
            payload: serde_bytes::ByteBuf::from(payload),
            linearizable: consistency == Consistency::Linearizable,
        };
        match self.call_node(node, &req, deadline).await? {
            Reply::Answer(Ok(b)) => Ok(b.into_vec()),
            Reply::Answer(Err(f)) => Err(from_failure(node, f)),
            _ => Err(unavailable(node, "it answered something else")),
        }
    }

    /// One request to another node's mediator; records latency and
    /// failures for routing.
    async fn call_node(&self, node: u64, req: &Request, deadline: Instant) -> Result<Reply> {
        let Some(addr) = self.0.raft.member_addrs().remove(&node) else {
            let left = self
                .0
                .peers
                .lock()
                .get(&node)
                .is_some_and(|p| p.left_at.is_some());
            return Err(unavailable(
                node,
                if left {
                    "it has left the cluster"
                } else {
                    "it is not a member of the cluster"
                },
            ));
        };
        let body = wire::encode(req).map_err(|e| unavailable(node, e))?;
        let ttl = deadline.saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return Err(Error::Timeout {
                waited: self.0.request_timeout,
                reason: TimeoutReason::NoAnswer { node },
            });
        }
        let start = Instant::now();
        self.0.loads.lock().entry(node).or_default().outstanding += 1;
        let r = self
            .0
            .pool
            .call(node, &addr, mediator_body(&body), ttl)
            .await;
        {
            let mut loads = self.0.loads.lock();
            let l = loads.entry(node).or_default();
            l.outstanding = l.outstanding.saturating_sub(1);
            if r.is_ok() {
                l.observe(start.elapsed(), Instant::now());
            }
        }
        self.record(node, r.is_ok());
        match r {
            Ok(b) => {
                wire::decode::<Reply>(&b).map_err(|e| unavailable(node, format!("bad reply: {e}")))
            }
            Err(TransportError::Timeout) => Err(Error::Timeout {
                waited: ttl,
                reason: TimeoutReason::NoAnswer { node },
            }),
            Err(TransportError::TooLarge { size, max }) => Err(Error::TooLarge {
                what: "request",
                size,
                max,
            }),
            Err(e) => Err(unavailable(node, e.to_string())),
        }
    }

    /// The members a routed query may go to: the live voters (this node
    /// always is one; learners are still catching up, so their state may
    /// be far behind), or, when every other one is suspect, all voters.
    fn candidates(&self) -> Vec<u64> {
        let me = self.id();
        let now = Instant::now();
        let mut all: Vec<u64> = self.0.raft.status().members;
        if !all.contains(&me) {
            all.push(me);
        }
        all.sort_unstable();
        let live: Vec<u64> = all
            .iter()
            .copied()
            .filter(|&id| id == me || self.liveness(id, now) == Liveness::Alive)
            .collect();
        if live.iter().any(|&id| id != me) || all.len() <= 1 {
            live
        } else {
            all
        }
    }

    /// Runs a query on the node its declared route picks (`here` runs it
    /// on this node); a node that cannot be reached (or dies mid-call) is
    /// skipped for the next candidate, until the request timeout.
    pub(crate) async fn routed<M, F, Fut>(
        &self,
        msg: M,
        consistency: Consistency,
        here: F,
    ) -> Result<M::Output>
    where
        M: Handled,
        F: FnOnce(M) -> Fut,
        Fut: Future<Output = Result<M::Output>>,
    {
        let Some((routing, decode)) = remote_of::<M>() else {
            return here(msg).await;
        };
        let me = self.id();
        let deadline = Instant::now() + self.0.request_timeout;
        let payload = crate::codec::encode_user(M::NAME, &msg)?;
        let mut msg = Some(msg);
        let mut tried: Vec<u64> = Vec::new();
        let mut last: Option<Error> = None;
        loop {
            let order: Vec<u64> = match routing {
                Routing::Local => vec![me],
                Routing::Leader => {
                    let leader = self.0.raft.status().leader;
                    match leader {
                        Some(l) if !tried.contains(&l) => vec![l],
                        _ => {
                            // wait for a (new) leader, within the deadline
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            self.0
                                .raft
                                .changed(left.min(Duration::from_millis(50)))
                                .await;
                            continue;
                        }
                    }
                }
                Routing::RoundRobin => {
                    let nodes = self.candidates();
                    let turn = self.0.turn.fetch_add(1, Ordering::Relaxed);
                    route::round_robin_order(turn, &nodes)
                }
                Routing::LeastLoaded => {
                    let nodes = self.candidates();
                    let loads = self.0.loads.lock().clone();
                    route::least_loaded_order(&nodes, &loads, Instant::now(), |n| {
                        rand::random_range(0..n)
                    })
                }
                Routing::Key(key) => {
                    let Some(m) = msg.as_ref() else { break };
                    route::hrw_order(key(m), &self.candidates())
                }
            };
            let order: Vec<u64> = order.into_iter().filter(|n| !tried.contains(n)).collect();
            if order.is_empty() {
                break;
            }
            for id in order {
                if id == me {
                    let m = match msg.take() {
                        Some(m) => m,
                        None => crate::codec::decode_user::<M>(M::NAME, &payload)?,
                    };
                    let start = Instant::now();
                    let r = here(m).await;
                    if matches!(routing, Routing::LeastLoaded) {
                        self.0
                            .loads
                            .lock()
                            .entry(me)
                            .or_default()
                            .observe(start.elapsed(), Instant::now());
                    }
                    return r;
                }
                tried.push(id);
                match self
                    .query_on(id, M::NAME, payload.clone(), consistency, deadline)
                    .await
                {
                    Ok(bytes) => return Ok(decode(&bytes)?),
                    Err(e @ Error::NodeUnavailable { .. }) => {
                        tracing::debug!(node = id, error = %e, "routed query: trying the next node");
                        last = Some(e);
                        if matches!(routing, Routing::Leader) {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if !matches!(routing, Routing::Leader) {
                break;
            }
        }
        Err(last.unwrap_or_else(|| Error::Timeout {
            waited: self.0.request_timeout,
            reason: TimeoutReason::NoMember {
                name: M::NAME.to_string(),
            },
        }))
    }

    /// Runs the handlers of the event `name` (encoded in `payload`) on
    /// every member this node knows of, now (see `Node::broadcast`).
    pub(crate) async fn broadcast(&self, name: &'static str, payload: Vec<u8>) -> Vec<Delivery> {
        let me = self.id();
        let deadline = Instant::now() + self.0.request_timeout;
        let mut targets: Vec<u64> = self.0.raft.member_addrs().into_keys().collect();
        if !targets.contains(&me) {
            targets.push(me);
        }
        let req = Request::Event {
            name: name.to_string(),
            payload: serde_bytes::ByteBuf::from(payload.clone()),
        };
        let calls = targets.into_iter().map(|id| {
            let req = &req;
            let payload = &payload;
            async move {
                let result = if id == me {
                    let _busy = self.busy();
                    service::run_event(me, name, payload)
                        .await
                        .map_err(|f| from_failure(id, f))
                } else {
                    match self.call_node(id, req, deadline).await {
                        Ok(Reply::Delivered(Ok(n))) => Ok(n),
                        Ok(Reply::Delivered(Err(f))) => Err(from_failure(id, f)),
                        Ok(_) => Err(unavailable(id, "it answered something else")),
                        Err(e) => Err(e),
                    }
                };
                Delivery { node: id, result }
            }
        });
        let mut out = futures::future::join_all(calls).await;
        out.sort_by_key(|d| d.node);
        out
    }
}
