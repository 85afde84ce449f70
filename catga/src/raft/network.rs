//! openraft's network adapter: how this node's Raft reaches the others
//! (append, vote, snapshot) over catga's transport pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::alias::SnapshotOf;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use super::wire::{Rpc, decode, encode};
use super::{TC, Vote};
use crate::transport::{Pool, TransportError};

/// Creates one [`PeerConn`] per target; openraft calls it.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) pool: Pool,
    refusals: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Network {
    pub(crate) fn new(pool: Pool) -> Network {
        Network {
            pool,
            refusals: Arc::default(),
        }
    }
}

pub(crate) struct PeerConn {
    pool: Pool,
    target: u64,
    addr: String,
    /// When a refused snapshot was last logged, per target (openraft
    /// re-sends it; the cause is logged at most every [`REFUSAL_LOG_EVERY`]).
    refusals: Arc<Mutex<HashMap<u64, Instant>>>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

impl PeerConn {
    fn log_refused(&self, reason: &str) {
        let now = Instant::now();
        let mut last = self.refusals.lock();
        let due = last
            .get(&self.target)
            .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_EVERY);
        if due {
            last.insert(self.target, now);
            tracing::error!(
                node = self.target,
                "node {} refuses this leader's snapshot: {reason}. It cannot catch up until it \
                 runs a version that knows every state in the snapshot (logged at most every \
                 {REFUSAL_LOG_EVERY:?})",
                self.target
            );
        }
    }
}

impl RaftNetworkFactory<TC> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        PeerConn {
            pool: self.pool.clone(),
            target,
            addr: node.addr.clone(),
            refusals: self.refusals.clone(),
        }
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
            .map_err(rpc_error)?;
        decode(&reply).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

impl RaftNetworkV2<TC> for PeerConn {
    type SnapshotData = Bytes;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TC>, RPCError<TC>> {
        let r: Result<AppendEntriesResponse<TC>, RaftError<TC>> =
            self.call(&Rpc::Append(rpc), option.hard_ttl()).await?;
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

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TC, Bytes>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TC>, StreamingError<TC>> {
        let rpc = Rpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.to_vec(),
        };
        // A snapshot can be large: give it at least a generous deadline of its own.
        let ttl = option.hard_ttl().max(Duration::from_secs(30));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call::<Result<SnapshotResponse<TC>, String>>(&rpc, ttl) => {
                r?.map_err(|e| {
                    if e.starts_with("snapshot refused") {
                        self.log_refused(&e);
                    }
                    StreamingError::Network(NetworkError::from_string(e))
                })
            }
        }
    }
}
