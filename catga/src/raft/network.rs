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
}

impl Network {
    pub(crate) fn new(pool: Pool, peers: Arc<PeerLog>) -> Network {
        Network {
            pool,
            refusals: Arc::default(),
            peers,
            unpiped: Arc::default(),
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
        }
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
        let lane = rand::random::<u64>();
        let ttl = option.hard_ttl();
        let send = move |seq: u64, req: AppendEntriesRequest<TC>| {
            let pool = pool.clone();
            let addr = addr.clone();
            let peers = peers.clone();
            let unpiped = unpiped.clone();
            let stage = match req.entries.is_empty() {
                false => crate::probe::Stage::Replicate,
                true => crate::probe::Stage::ReplicateEmpty,
            };
            let body = encode(&Rpc::AppendPipe { lane, seq, req });
            async move {
                let t = crate::probe::start();
                let body = body.map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
                let reply = pool.call(target, &addr, body, ttl).await.map_err(|e| {
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
        let r: Result<AppendEntriesResponse<TC>, RaftError<TC>> =
            self.call(&Rpc::Append(rpc), option.hard_ttl()).await?;
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
