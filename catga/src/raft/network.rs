//! openraft's network adapter: how this node's Raft reaches the others
//! (append, vote, snapshot) over catga's transport pool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use openraft::alias::SnapshotOf;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use super::quiet::LinkFloor;
use super::snapshot_file::SnapFile;
use super::wire::{Rpc, decode, encode};
use super::{TC, Vote};
use crate::transport::{Pool, TransportError};

/// Creates one [`PeerConn`] per target; openraft calls it.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) pool: Pool,
    refusals: Arc<Mutex<HashMap<u64, Instant>>>,
    peers: Arc<PeerLog>,
    /// Targets that answered a pipelined append with "bad request" (an
    /// older catga): replicated one request at a time.
    unpiped: Arc<Mutex<HashSet<u64>>>,
    deadlines: Arc<Deadlines>,
}

impl Network {
    /// `cap`: the longest an append may wait for its answer (the election
    /// timeout's minimum: a link that answers nothing for that long is as
    /// good as dead, and the followers campaign anyway). `floor` learns the
    /// slowest link's deadline (see [`LinkFloor`]).
    pub(crate) fn new(
        pool: Pool,
        peers: Arc<PeerLog>,
        cap: Duration,
        floor: Arc<LinkFloor>,
    ) -> Network {
        let mut deadlines = Deadlines::new(cap);
        deadlines.floor = floor;
        Network {
            pool,
            refusals: Arc::default(),
            peers,
            unpiped: Arc::default(),
            deadlines: Arc::new(deadlines),
        }
    }

    fn client(&self, target: u64, node: &BasicNode, pipelined: bool) -> PeerConn {
        PeerConn {
            pool: self.pool.clone(),
            target,
            addr: node.addr.clone(),
            refusals: self.refusals.clone(),
            peers: self.peers.clone(),
            pipelined,
            unpiped: self.unpiped.clone(),
            deadlines: self.deadlines.clone(),
        }
    }
}

/// How long an append to a peer may wait for its answer: the link's, not
/// the heartbeat's. openraft gives every append the heartbeat interval as
/// its ttl (50 ms by default), so on a link whose round trip is longer no
/// append would ever be answered in time and nothing would commit. The
/// deadline is TCP's retransmission timeout over the answers seen
/// (RFC 6298: smoothed time + 4 × its variation), plus a term for the
/// request's size, never under openraft's ttl and never over `cap`. A
/// timeout doubles the next deadline (up to `cap`) until an answer comes,
/// so a link slower than any estimate so far is learnt in a few tries.
/// The slowest link's deadline is also published as the node's
/// [`LinkFloor`], which stretches openraft's heartbeat timeout (see there).
pub(crate) struct Deadlines {
    links: Mutex<HashMap<u64, LinkTimes>>,
    cap: Duration,
    floor: Arc<LinkFloor>,
}

#[derive(Default, Clone, Copy)]
struct LinkTimes {
    /// Smoothed time to an answer, and its variation.
    srtt: Option<Duration>,
    rttvar: Duration,
    /// After a timeout: the next deadline at least.
    backoff: Option<Duration>,
}

/// One request's clock: when it ends without an answer or a transport
/// error, because openraft dropped it at its own ttl (a heartbeat, bounded
/// by openraft to the heartbeat interval), that counts as a timeout too,
/// so a link slower than the heartbeat is learnt even when idle.
struct Pending {
    deadlines: Arc<Deadlines>,
    target: u64,
    ttl: Duration,
    sent: Instant,
    done: bool,
}

impl Pending {
    fn new(deadlines: Arc<Deadlines>, target: u64, ttl: Duration) -> Pending {
        Pending {
            deadlines,
            target,
            ttl,
            sent: Instant::now(),
            done: false,
        }
    }

    fn finish<T>(mut self, r: &Result<T, TransportError>, deadline: Duration) {
        self.done = true;
        match r {
            Ok(_) => self.deadlines.answered(self.target, self.sent.elapsed()),
            Err(TransportError::Timeout) => self.deadlines.timed_out(self.target, deadline),
            Err(_) => {}
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let waited = self.sent.elapsed();
        if !self.done && waited >= self.ttl {
            self.deadlines.timed_out(self.target, waited);
        }
    }
}

/// A request's size adds 1 ms per this many bytes (a 64 MB/s link).
const BYTES_PER_MS: usize = 64 << 10;

impl Deadlines {
    pub(crate) fn new(cap: Duration) -> Deadlines {
        Deadlines {
            links: Mutex::default(),
            cap,
            floor: Arc::default(),
        }
    }

    /// A link's own deadline, without openraft's ttl or a size term.
    fn link(&self, t: &LinkTimes) -> Duration {
        let rto = t.srtt.map(|s| s + 4 * t.rttvar).unwrap_or_default();
        rto.max(t.backoff.unwrap_or_default()).min(self.cap)
    }

    fn publish(&self, links: &HashMap<u64, LinkTimes>) {
        let slowest = links.values().map(|t| self.link(t)).max();
        self.floor.set(slowest.unwrap_or_default());
    }

    /// The deadline of a request of `bytes` to `target`, openraft's `ttl`
    /// at least.
    pub(crate) fn get(&self, target: u64, ttl: Duration, bytes: usize) -> Duration {
        let t = self.links.lock().get(&target).copied().unwrap_or_default();
        let size = Duration::from_millis((bytes / BYTES_PER_MS) as u64);
        let d = ttl.max(self.link(&t)) + size;
        d.min(self.cap.max(ttl))
    }

    /// An answer from `target` came `took` after its request went out.
    pub(crate) fn answered(&self, target: u64, took: Duration) {
        let mut g = self.links.lock();
        let t = g.entry(target).or_default();
        t.backoff = None;
        match t.srtt {
            None => {
                t.srtt = Some(took);
                t.rttvar = took / 2;
            }
            Some(s) => {
                let err = s.abs_diff(took);
                t.rttvar = t.rttvar * 3 / 4 + err / 4;
                t.srtt = Some(s * 7 / 8 + took / 8);
            }
        }
        self.publish(&g);
    }

    /// A request to `target` got no answer within `deadline`.
    pub(crate) fn timed_out(&self, target: u64, deadline: Duration) {
        let mut g = self.links.lock();
        let t = g.entry(target).or_default();
        t.backoff = Some((deadline * 2).min(self.cap));
        self.publish(&g);
    }

    /// The smoothed time to an answer from `target`, if any came.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn srtt(&self, target: u64) -> Option<Duration> {
        self.links.lock().get(&target).and_then(|t| t.srtt)
    }
}

/// The most pipelined AppendEntries in flight to one follower.
const PIPELINE_DEPTH: usize = 8;

/// What replication to each peer last did: its last error and when it last
/// made progress (a snapshot chunk taken). `add_node` waits while a learner
/// makes progress and, when it gives up, says why.
#[derive(Default)]
pub(crate) struct PeerLog {
    peers: Mutex<HashMap<u64, PeerNote>>,
}

#[derive(Default, Clone)]
pub(crate) struct PeerNote {
    pub(crate) error: Option<String>,
    pub(crate) progress: Option<Instant>,
}

impl PeerLog {
    fn failed(&self, target: u64, e: String) {
        self.peers.lock().entry(target).or_default().error = Some(e);
    }

    fn progressed(&self, target: u64) {
        let mut g = self.peers.lock();
        let n = g.entry(target).or_default();
        n.progress = Some(Instant::now());
        n.error = None;
    }

    pub(crate) fn note(&self, target: u64) -> PeerNote {
        self.peers.lock().get(&target).cloned().unwrap_or_default()
    }

    pub(crate) fn forget(&self, target: u64) {
        self.peers.lock().remove(&target);
    }
}

pub(crate) struct PeerConn {
    pool: Pool,
    target: u64,
    addr: String,
    /// When a refused snapshot was last logged, per target (openraft
    /// re-sends it; the cause is logged at most every [`REFUSAL_LOG_EVERY`]).
    refusals: Arc<Mutex<HashMap<u64, Instant>>>,
    peers: Arc<PeerLog>,
    /// Replication (pipelined appends); heartbeats and snapshots go one
    /// request at a time.
    pipelined: bool,
    unpiped: Arc<Mutex<HashSet<u64>>>,
    deadlines: Arc<Deadlines>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// The largest snapshot chunk sent in one frame.
const SNAPSHOT_CHUNK: usize = 1 << 20;

impl PeerConn {
    /// A snapshot the target did not take: logged (rate-limited), and the
    /// reason kept for `add_node`'s answer.
    fn snapshot_failed(&self, e: String) -> StreamingError<TC> {
        self.log_refused(&e);
        let e = format!("it did not take this leader's snapshot: {e}");
        self.peers.failed(self.target, e.clone());
        StreamingError::Network(NetworkError::from_string(e))
    }

    fn log_refused(&self, reason: &str) {
        let now = Instant::now();
        let mut last = self.refusals.lock();
        let due = last
            .get(&self.target)
            .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_EVERY);
        if due {
            last.insert(self.target, now);
            if reason.starts_with("snapshot refused") {
                tracing::error!(
                    node = self.target,
                    "node {} refuses this leader's snapshot: {reason}. It cannot catch up until \
                     it runs a version that knows every state in the snapshot (logged at most \
                     every {REFUSAL_LOG_EVERY:?})",
                    self.target
                );
            } else {
                tracing::error!(
                    node = self.target,
                    "node {} did not take this leader's snapshot: {reason}. It cannot catch up \
                     until it does; the leader tries again (logged at most every \
                     {REFUSAL_LOG_EVERY:?})",
                    self.target
                );
            }
        }
    }
}

impl RaftNetworkFactory<TC> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        self.client(target, node, true)
    }

    /// Heartbeats never wait behind pipelined appends: one request at a
    /// time, each served on its own at the follower.
    async fn new_heartbeat_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        self.client(target, node, false)
    }

    async fn new_snapshot_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        self.client(target, node, false)
    }
}

fn rpc_error(e: TransportError) -> RPCError<TC> {
    match e {
        TransportError::Timeout | TransportError::Remote(_) => {
            RPCError::Network(NetworkError::from_string(e.to_string()))
        }
        other => RPCError::Unreachable(Unreachable::from_string(other.to_string())),
    }
}

impl PeerConn {
    async fn call<T: DeserializeOwned>(&self, rpc: &Rpc, ttl: Duration) -> Result<T, RPCError<TC>> {
        let body = encode(rpc).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let reply = self
            .pool
            .call(self.target, &self.addr, body, ttl)
            .await
            .map_err(|e| {
                self.peers.failed(self.target, e.to_string());
                rpc_error(e)
            })?;
        decode(&reply).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }

    /// [`PeerConn::call`] for an append: its deadline follows the link
    /// ([`Deadlines`]), `ttl` (openraft's) at least.
    async fn call_timed<T: DeserializeOwned>(
        &self,
        rpc: &Rpc,
        ttl: Duration,
    ) -> Result<T, RPCError<TC>> {
        let body = encode(rpc).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let deadline = self.deadlines.get(self.target, ttl, body.len());
        let pending = Pending::new(self.deadlines.clone(), self.target, ttl);
        let reply = self
            .pool
            .call(self.target, &self.addr, body, deadline)
            .await;
        pending.finish(&reply, deadline);
        let reply = reply.map_err(|e| {
            self.peers.failed(self.target, e.to_string());
            rpc_error(e)
        })?;
        decode(&reply).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl PeerConn {
    /// The pipelined replication stream (see `raft/pipe.rs` for the
    /// follower's end): up to [`PIPELINE_DEPTH`] requests in flight, each
    /// numbered in a new lane, answers yielded in order. The first request
    /// a follower answers with "bad request" (an older catga) marks it for
    /// one-at-a-time replication and ends this stream; openraft starts the
    /// next one at once.
    fn pipelined_stream<S>(
        &self,
        input: S,
        option: RPCOption,
    ) -> BoxStream<'static, Result<StreamAppendResult<TC>, RPCError<TC>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TC>> + OptionalSend + Unpin + 'static,
    {
        type Answer = Result<StreamAppendResult<TC>, RPCError<TC>>;
        let pool = self.pool.clone();
        let (target, addr) = (self.target, self.addr.clone());
        let peers = self.peers.clone();
        let unpiped = self.unpiped.clone();
        let deadlines = self.deadlines.clone();
        let lane = rand::random::<u64>();
        let ttl = option.hard_ttl();
        let send = move |seq: u64, req: AppendEntriesRequest<TC>| {
            let pool = pool.clone();
            let addr = addr.clone();
            let peers = peers.clone();
            let unpiped = unpiped.clone();
            let deadlines = deadlines.clone();
            let stage = match req.entries.is_empty() {
                false => crate::probe::Stage::Replicate,
                true => crate::probe::Stage::ReplicateEmpty,
            };
            let body = encode(&Rpc::AppendPipe { lane, seq, req });
            async move {
                let t = crate::probe::start();
                let body = body.map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
                let deadline = deadlines.get(target, ttl, body.len());
                let pending = Pending::new(deadlines.clone(), target, ttl);
                let reply = pool.call(target, &addr, body, deadline).await;
                pending.finish(&reply, deadline);
                let reply = reply.map_err(|e| {
                    if matches!(&e, TransportError::Remote(m) if m.starts_with("bad request")) {
                        unpiped.lock().insert(target);
                    }
                    peers.failed(target, e.to_string());
                    rpc_error(e)
                })?;
                crate::probe::since(stage, t);
                let r: Result<StreamAppendResult<TC>, String> =
                    decode(&reply).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
                r.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
            }
        };
        struct Pipe<S, F: Future> {
            input: Option<S>,
            seq: u64,
            in_flight: FuturesOrdered<F>,
        }
        let state = Pipe {
            input: Some(input),
            seq: 0,
            in_flight: FuturesOrdered::new(),
        };
        let stream = futures::stream::unfold(Some(state), move |state| {
            let send = send.clone();
            async move {
                let mut p = state?;
                loop {
                    let more = p.input.is_some() && p.in_flight.len() < PIPELINE_DEPTH;
                    if p.in_flight.is_empty() && !more {
                        return None;
                    }
                    tokio::select! {
                        biased;
                        answer = p.in_flight.next(), if !p.in_flight.is_empty() => {
                            let answer: Answer = answer?;
                            // an error ends the stream (openraft starts anew)
                            let go_on = matches!(answer, Ok(Ok(_)));
                            return Some((answer, go_on.then_some(p)));
                        }
                        req = async { p.input.as_mut()?.next().await }, if more => match req {
                            Some(req) => {
                                p.in_flight.push_back(send(p.seq, req));
                                p.seq += 1;
                            }
                            None => p.input = None,
                        },
                    }
                }
            }
        });
        Box::pin(stream)
    }
}

impl RaftNetworkV2<TC> for PeerConn {
    type SnapshotData = SnapFile;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TC>, RPCError<TC>>>, RPCError<TC>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TC>> + OptionalSend + Unpin + 'static,
    {
        if !self.pipelined || self.unpiped.lock().contains(&self.target) {
            return stream_append_sequential(self, input, option);
        }
        let stream = self.pipelined_stream(input, option);
        Box::pin(async move { Ok(stream) })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TC>, RPCError<TC>> {
        let t = crate::probe::start();
        let stage = match rpc.entries.is_empty() {
            false => crate::probe::Stage::Replicate,
            true => crate::probe::Stage::ReplicateEmpty,
        };
        let r: Result<AppendEntriesResponse<TC>, RaftError<TC>> = self
            .call_timed(&Rpc::Append(rpc), option.hard_ttl())
            .await?;
        crate::probe::since(stage, t);
        r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        let r: Result<VoteResponse<TC>, RaftError<TC>> =
            self.call(&Rpc::Vote(rpc), option.hard_ttl()).await?;
        r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    /// Pre-vote (see `enable_pre_vote` in `handle.rs`): a node that cannot
    /// win, such as one that just restarted while the leader is healthy,
    /// asks first and does not bump its term or depose the leader. An
    /// unreachable peer is an error, never a grant.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        let r: Result<VoteResponse<TC>, RaftError<TC>> =
            self.call(&Rpc::PreVote(rpc), option.hard_ttl()).await?;
        r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    /// Sends the snapshot's state stream from its file in chunks well
    /// under the frame limit (memory stays one chunk, whatever the state's
    /// size), then asks the target to check and install it.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TC, SnapFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TC>, StreamingError<TC>> {
        let file = snapshot.snapshot;
        let chunk = (self.pool.max_frame_bytes() / 2).min(SNAPSHOT_CHUNK);
        let transfer = rand::random::<u64>();
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let net = |e: String| StreamingError::Network(NetworkError::from_string(e));
        let send = async {
            let mut offset = 0u64;
            loop {
                let f = file.clone();
                let data = tokio::task::spawn_blocking(move || f.read_chunk(offset, chunk))
                    .await
                    .map_err(|e| net(e.to_string()))?
                    .map_err(|e| net(format!("reading the snapshot: {e}")))?;
                let n = data.len() as u64;
                let rpc = Rpc::SnapshotChunk {
                    vote,
                    transfer,
                    offset,
                    data,
                };
                let r: Result<(), String> = self.call(&rpc, ttl).await?;
                r.map_err(|e| self.snapshot_failed(e))?;
                self.peers.progressed(self.target);
                offset += n;
                if offset >= file.len {
                    break;
                }
            }
            // checking and installing reads the whole state: a deadline
            // that grows with it (1 s per 8 MiB)
            let done_ttl = ttl.max(Duration::from_secs(30)) + Duration::from_secs(file.len >> 23);
            let rpc = Rpc::SnapshotDone {
                vote,
                transfer,
                len: file.len,
                meta: snapshot.meta,
            };
            let r: Result<SnapshotResponse<TC>, String> = self.call(&rpc, done_ttl).await?;
            r.map_err(|e| self.snapshot_failed(e))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Deadlines;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_unknown_link_gets_openraft_s_ttl() {
        let d = Deadlines::new(150 * MS);
        assert_eq!(d.get(2, 50 * MS, 100), 50 * MS);
    }

    #[test]
    fn a_slow_link_is_learnt_from_timeouts_then_from_answers() {
        let d = Deadlines::new(150 * MS);
        // 100 ms round trips: the first tries time out, each doubling
        d.timed_out(2, 50 * MS);
        assert_eq!(d.get(2, 50 * MS, 0), 100 * MS);
        d.timed_out(2, 100 * MS);
        assert_eq!(d.get(2, 50 * MS, 0), 150 * MS, "never past the cap");
        for _ in 0..20 {
            d.answered(2, 100 * MS);
        }
        let got = d.get(2, 50 * MS, 0);
        assert!(got >= 100 * MS && got <= 150 * MS, "{got:?}");
        // another peer's link is its own
        assert_eq!(d.get(3, 50 * MS, 0), 50 * MS);
    }

    #[test]
    fn a_fast_link_keeps_openraft_s_ttl() {
        let d = Deadlines::new(150 * MS);
        for _ in 0..20 {
            d.answered(2, MS);
        }
        assert_eq!(d.get(2, 50 * MS, 0), 50 * MS);
        assert!(d.srtt(2).is_some_and(|s| s <= 2 * MS));
    }

    #[test]
    fn the_slowest_link_is_published_as_the_floor() {
        let d = Deadlines::new(150 * MS);
        d.answered(2, MS);
        // the first answer: srtt 1 ms, variation 0.5 ms, so 1 + 4 × 0.5
        assert_eq!(d.floor.get(), 3 * MS);
        d.timed_out(3, 50 * MS);
        assert_eq!(d.floor.get(), 100 * MS);
        d.timed_out(3, 100 * MS);
        assert_eq!(d.floor.get(), 150 * MS, "never past the cap");
    }

    #[test]
    fn a_big_request_gets_more_time() {
        let d = Deadlines::new(Duration::from_secs(1));
        assert_eq!(d.get(2, 50 * MS, 4 << 20), 50 * MS + 64 * MS);
    }
}
