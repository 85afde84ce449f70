//! The openraft network adapter (client side) and the RPC service that
//! answers other nodes (server side), both over catga's transport.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::alias::SnapshotOf;
use openraft::errors::{
    ClientWriteError, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, ReadPolicy, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Raft, Redirect, Rpc, TC, Vote};
use crate::machine::Applied;
use crate::transport::{Pool, Service, TransportError};

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
    crate::codec::encode(v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    crate::codec::decode(b, crate::codec::INTERNAL_DEPTH).map_err(|e| e.to_string())
}

/// Creates one [`PeerConn`] per target; openraft calls it.
#[derive(Clone)]
pub(crate) struct Network {
    pub pool: Pool,
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

/// Answers RPCs from other nodes.
pub(crate) struct RaftService {
    pub raft: OnceLock<Raft>,
}

impl RaftService {
    pub fn new() -> Arc<RaftService> {
        Arc::new(RaftService {
            raft: OnceLock::new(),
        })
    }
}

/// Leader-side handling of a forwarded write.
pub(crate) async fn leader_write(
    raft: &Raft,
    mut env: crate::machine::Envelope,
) -> Redirect<Applied> {
    // The leader's clock, not the sender's, stamps the entry: one skewed
    // client cannot move the log clock that expires dedup records.
    env.time_ms = crate::cluster::now_ms();
    match raft.client_write(env).await {
        Ok(resp) => Redirect::Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Redirect::NotLeader(f.leader_id)
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
            Redirect::Unknown(format!("entry discarded by a leader change: {f}"))
        }
        Err(RaftError::APIError(e)) => Redirect::Failed(e.to_string()),
        Err(RaftError::Fatal(e)) => Redirect::Unknown(format!("leader stopped: {e}")),
    }
}

/// Leader-side handling of a forwarded batch: proposed together, answered
/// in order.
pub(crate) async fn leader_write_many(
    raft: &Raft,
    mut envs: Vec<crate::machine::Envelope>,
) -> Vec<Redirect<Applied>> {
    use futures::StreamExt;
    let n = envs.len();
    let now = crate::cluster::now_ms();
    for e in &mut envs {
        e.time_ms = now;
    }
    let mut answers = Vec::with_capacity(n);
    match raft.client_write_many(envs).await {
        Ok(mut results) => {
            while let Some(r) = results.next().await {
                answers.push(match r {
                    Ok(Ok(w)) => Redirect::Ok(w.response),
                    Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                        Redirect::NotLeader(f.leader_id)
                    }
                    Ok(Err(ClientWriteError::LogEntryDiscarded(f))) => {
                        Redirect::Unknown(format!("entry discarded by a leader change: {f}"))
                    }
                    Ok(Err(e)) => Redirect::Failed(e.to_string()),
                    Err(fatal) => Redirect::Unknown(format!("leader stopped: {fatal}")),
                });
            }
        }
        Err(fatal) => {
            answers.extend((0..n).map(|_| Redirect::Unknown(format!("leader stopped: {fatal}"))))
        }
    }
    // a stream cut short leaves the rest unknown (retried with their ids)
    while answers.len() < n {
        answers.push(Redirect::Unknown("no answer from the leader".into()));
    }
    answers
}

/// Leader-side: a read index for a follower's linearizable read.
pub(crate) async fn leader_read_index(raft: &Raft) -> Redirect<super::LogId> {
    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
        Ok(lin) => Redirect::Ok(*lin.read_log_id().log_id()),
        Err(e) => match e.forward_to_leader() {
            Some(f) => Redirect::NotLeader(f.leader_id),
            None => Redirect::Unknown(e.to_string()),
        },
    }
}

/// Terms beyond this are refused: a Raft term grows by one per election, and
/// one near `u64::MAX` would overflow openraft's `term + 1` and leave the
/// cluster without a leader for good.
const MAX_TERM: u64 = u64::MAX / 4;

fn sane_vote(v: &Vote) -> Result<(), String> {
    if v.leader_id.term > MAX_TERM {
        Err(format!("refused: absurd term {}", v.leader_id.term))
    } else {
        Ok(())
    }
}

async fn handle(raft: Raft, rpc: Rpc) -> Result<Bytes, String> {
    match &rpc {
        Rpc::Append(req) => sane_vote(&req.vote)?,
        Rpc::Vote(req) => sane_vote(&req.vote)?,
        Rpc::Snapshot { vote, .. } => sane_vote(vote)?,
        _ => {}
    }
    match rpc {
        Rpc::Append(req) => encode(&raft.append_entries(req).await),
        Rpc::Vote(req) => encode(&raft.vote(req).await),
        Rpc::Snapshot { vote, meta, data } => {
            // A snapshot this program cannot restore (a leader running newer
            // code, or garbage) is refused here: handed to openraft, the
            // failure would stop this node's Raft.
            let check = data.clone();
            let valid = crate::codec::on_big_stack(move || {
                crate::machine::Machine::new().and_then(|mut m| m.restore(&check))
            })
            .await;
            match valid {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return encode(&Err::<SnapshotResponse<TC>, String>(format!(
                        "snapshot refused: {e}"
                    )));
                }
                Err(e) => return encode(&Err::<SnapshotResponse<TC>, String>(e.to_string())),
            }
            let snap = Snapshot {
                meta,
                snapshot: Bytes::from(data),
            };
            let r = raft
                .install_full_snapshot(vote, snap)
                .await
                .map_err(|e| e.to_string());
            encode(&r)
        }
        Rpc::Write(env) => encode(&leader_write(&raft, env).await),
        Rpc::WriteMany(envs) => encode(&leader_write_many(&raft, envs).await),
        Rpc::ReadIndex => encode(&leader_read_index(&raft).await),
        Rpc::AddNode { id, addr } => encode(&super::handle::leader_add_node(&raft, id, addr).await),
        Rpc::RemoveNode { id } => encode(&super::handle::leader_remove_node(&raft, id).await),
    }
}

impl Service for RaftService {
    fn call(&self, _from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let Some(raft) = self.raft.get().cloned() else {
            return futures::future::ready(Err("node is starting".to_string())).boxed();
        };
        let rpc: Rpc = match decode(&body) {
            Ok(r) => r,
            Err(e) => return futures::future::ready(Err(format!("bad request: {e}"))).boxed(),
        };
        handle(raft, rpc).boxed()
    }
}
