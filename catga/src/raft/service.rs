//! The RPC service other nodes talk to: decodes a request, refuses what
//! would harm this node (absurd terms, snapshots it cannot restore), and
//! hands the rest to openraft or to the leader-side operations.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::Snapshot;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::SnapshotResponse;

use super::compat::{self, Compat};
use super::contact::LeaderContact;
use super::state_machine::SmStore;
use super::wire::{Rpc, decode, encode};
use super::{Raft, TC, Vote, leader};
use crate::machine::Machine;
use crate::transport::Service;

/// Answers RPCs from other nodes. The Raft instance is set once it exists
/// (the server starts before it, so that its address is known).
pub(crate) struct RaftService {
    pub(crate) raft: OnceLock<Running>,
    /// The last leader heard from (for health).
    pub(crate) contact: Arc<LeaderContact>,
}

/// What the service needs once the node runs.
#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) raft: Raft,
    pub(crate) compat: Arc<Compat>,
    pub(crate) sm: SmStore,
}

impl RaftService {
    pub(crate) fn new() -> Arc<RaftService> {
        Arc::new(RaftService {
            raft: OnceLock::new(),
            contact: Arc::default(),
        })
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

async fn install_snapshot(
    raft: Raft,
    sm: SmStore,
    vote: Vote,
    meta: openraft::alias::SnapshotMetaOf<TC>,
    data: Vec<u8>,
) -> Result<Bytes, String> {
    // A snapshot this program cannot restore (a leader running newer code,
    // or garbage) is refused here: handed to openraft, the failure would
    // stop this node's Raft.
    let check = data.clone();
    let valid =
        crate::codec::on_big_stack(move || Machine::new().and_then(|mut m| m.restore(&check)))
            .await;
    let refused = match valid {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("snapshot refused: {e}")),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = refused {
        // Said to the leader, which logs it; and here (ERROR once, health
        // not ready) when it comes from the current leader: a stale or
        // forged one changes nothing, and openraft would refuse it anyway.
        let current = raft.metrics().borrow_watched().vote;
        if vote.partial_cmp(&current).is_some_and(|o| o.is_ge()) {
            sm.shared.stall.snapshot_refused(&reason);
        }
        return encode(&Err::<SnapshotResponse<TC>, String>(reason));
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

async fn handle(run: Running, contact: Arc<LeaderContact>, rpc: Rpc) -> Result<Bytes, String> {
    let Running { raft, compat, sm } = run;
    match &rpc {
        Rpc::Append(req) => sane_vote(&req.vote)?,
        Rpc::Vote(req) | Rpc::PreVote(req) => sane_vote(&req.vote)?,
        Rpc::Snapshot { vote, .. } => sane_vote(vote)?,
        _ => {}
    }
    match rpc {
        Rpc::Append(req) => {
            let (term, leader) = (req.vote.leader_id.term, req.vote.leader_id.node_id);
            let commit = req.leader_commit.map(|l| l.index);
            let r = raft.append_entries(req).await;
            if matches!(&r, Ok(resp) if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                contact.heard(term, leader, commit);
            }
            encode(&r)
        }
        Rpc::Vote(req) => encode(&raft.vote(req).await),
        Rpc::PreVote(req) => encode(&raft.pre_vote(req).await),
        Rpc::Snapshot { vote, meta, data } => install_snapshot(raft, sm, vote, meta, data).await,
        Rpc::Write(env) => encode(&leader::write(&raft, &compat, env).await),
        Rpc::WriteMany(envs) => encode(&leader::write_many(&raft, &compat, envs).await),
        Rpc::ReadIndex => encode(&leader::read_index(&raft).await),
        Rpc::AddNode { id, addr } => encode(&leader::add_node(&raft, id, addr).await),
        Rpc::RemoveNode { id } => encode(&leader::remove_node(&raft, id).await),
        Rpc::Capabilities => encode(&compat::answer()),
    }
}

impl Service for RaftService {
    fn call(&self, _from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let rpc: Rpc = match decode(&body) {
            Ok(r) => r,
            Err(e) => return futures::future::ready(Err(format!("bad request: {e}"))).boxed(),
        };
        if let Rpc::Capabilities = rpc {
            return futures::future::ready(encode(&compat::answer())).boxed();
        }
        let Some(run) = self.raft.get().cloned() else {
            return futures::future::ready(Err("node is starting".to_string())).boxed();
        };
        handle(run, self.contact.clone(), rpc).boxed()
    }
}
