//! openraft's network adapter: how this node's Raft reaches the others
//! (append, vote, snapshot) over catga's transport pool.

use std::time::Duration;

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
use serde::de::DeserializeOwned;

use super::wire::{Rpc, decode, encode};
use super::{TC, Vote};
use crate::transport::{Pool, TransportError};

/// Creates one [`PeerConn`] per target; openraft calls it.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) pool: Pool,
}

pub(crate) struct PeerConn {
    pool: Pool,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TC> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        PeerConn {
            pool: self.pool.clone(),
            target,
            addr: node.addr.clone(),
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
                r?.map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
            }
        }
    }
}
