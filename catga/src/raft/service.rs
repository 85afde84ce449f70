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
use super::network::PeerLog;
use super::pipe::{PipeReply, Pipes};
use super::snapshot_file::{self, SnapFile};
use super::state_machine::SmStore;
use super::wire::{Rpc, decode, encode};
use super::{Raft, TC, Vote, leader, poison};
use crate::transport::Service;

/// Answers RPCs from other nodes. The Raft instance is set once it exists
/// (the server starts before it, so that its address is known).
pub(crate) struct RaftService {
    pub(crate) raft: OnceLock<Running>,
    /// The last leader heard from (for health).
    pub(crate) contact: Arc<LeaderContact>,
    /// A chunked snapshot being received.
    receiving: Receiving,
    /// Pipelined replication's lanes.
    pipes: Pipes,
}

/// What the service needs once the node runs.
#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) raft: Raft,
    pub(crate) compat: Arc<Compat>,
    pub(crate) sm: SmStore,
    /// What replication to each peer last did (for `add_node`).
    pub(crate) peers: Arc<PeerLog>,
    /// The most voters the leader keeps (`raft/voters.rs`).
    pub(crate) voters: usize,
}

impl RaftService {
    pub(crate) fn new() -> Arc<RaftService> {
        Arc::new(RaftService {
            raft: OnceLock::new(),
            contact: Arc::default(),
            receiving: Arc::default(),
            pipes: Pipes::default(),
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

/// A chunked snapshot being received into `snapshot.incoming`.
pub(crate) struct Incoming {
    transfer: u64,
    file: std::fs::File,
    written: u64,
}

/// The transfer in progress, if any (one at a time: a new one replaces it).
pub(crate) type Receiving = Arc<tokio::sync::Mutex<Option<Incoming>>>;

/// Takes one chunk, in order, straight to disk.
async fn take_chunk(
    sm: &SmStore,
    receiving: &Receiving,
    transfer: u64,
    offset: u64,
    data: Vec<u8>,
) -> Result<(), String> {
    let mut slot = receiving.lock().await;
    let current = match slot.take() {
        Some(i) if i.transfer == transfer => i,
        other if offset != 0 => {
            *slot = other;
            return Err(format!(
                "snapshot transfer {transfer:x} is unknown here (this node restarted, or a newer \
                 transfer replaced it): send it again from the start"
            ));
        }
        _ => {
            let path = sm.shared.dir.join(snapshot_file::INCOMING);
            let file = tokio::task::spawn_blocking(move || {
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("receiving a snapshot: {e}"))?;
            Incoming {
                transfer,
                file,
                written: 0,
            }
        }
    };
    if offset != current.written {
        let at = current.written;
        *slot = Some(current);
        return Err(format!(
            "snapshot chunk at {offset}, expected {at}: send it again from the start"
        ));
    }
    let mut current = current;
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        current.file.write_all(&data)?;
        current.written += data.len() as u64;
        Ok::<_, std::io::Error>(current)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("receiving a snapshot: {e}"))?;
    *slot = Some(written);
    Ok(())
}

/// The last chunk came: the received stream, synced.
async fn take_done(receiving: &Receiving, transfer: u64, len: u64) -> Result<SnapFile, String> {
    let current = match receiving.lock().await.take() {
        Some(i) if i.transfer == transfer && i.written == len => i,
        Some(i) if i.transfer == transfer => {
            return Err(format!(
                "snapshot transfer {transfer:x} ended at {} of {len} bytes",
                i.written
            ));
        }
        _ => return Err(format!("snapshot transfer {transfer:x} is unknown here")),
    };
    tokio::task::spawn_blocking(move || {
        current.file.sync_all()?;
        SnapFile::whole(current.file)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("receiving a snapshot: {e}"))
}

/// The whole snapshot of an older leader (one frame), to a file.
async fn take_whole(sm: &SmStore, data: Vec<u8>) -> Result<SnapFile, String> {
    let path = sm.shared.dir.join(snapshot_file::INCOMING);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(&data)?;
        file.sync_all()?;
        SnapFile::whole(file)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("receiving a snapshot: {e}"))
}

async fn install_snapshot(
    raft: Raft,
    sm: SmStore,
    vote: Vote,
    meta: openraft::alias::SnapshotMetaOf<TC>,
    snap: SnapFile,
) -> Result<Bytes, String> {
    // A snapshot this program cannot restore (a leader running newer code,
    // or garbage) is refused here: handed to openraft, the failure would
    // stop this node's Raft. The machine restored to check it is kept for
    // the install, which then does not decode it again.
    let check = snap.clone();
    let valid = crate::codec::on_big_stack(move || check.restore()).await;
    let refused = match valid {
        Ok(Ok(m)) => {
            *sm.shared.prepared.lock() = Some((meta.last_log_id, m));
            None
        }
        Ok(Err(e)) => Some(format!("snapshot refused: {e}")),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = refused {
        let _ = std::fs::remove_file(sm.shared.dir.join(snapshot_file::INCOMING));
        // Said to the leader, which logs it; and here (ERROR once, health
        // not ready) when it comes from the current leader: a stale or
        // forged one changes nothing, and openraft would refuse it anyway.
        let current = raft.metrics().borrow_watched().vote;
        if vote.partial_cmp(&current).is_some_and(|o| o.is_ge()) {
            sm.shared.stall.snapshot_refused(&reason);
        }
        return encode(&Err::<SnapshotResponse<TC>, String>(reason));
    }
    let r = raft
        .install_full_snapshot(
            vote,
            Snapshot {
                meta,
                snapshot: snap,
            },
        )
        .await
        .map_err(|e| e.to_string());
    // not installed (a stale leader): the restored machine is not kept
    sm.shared.prepared.lock().take();
    encode(&r)
}

async fn handle(
    run: Running,
    contact: Arc<LeaderContact>,
    receiving: Receiving,
    rpc: Rpc,
) -> Result<Bytes, String> {
    let Running {
        raft,
        compat,
        sm,
        peers,
        voters,
    } = run;
    // A Raft that stopped (its storage failed) is not asked anything: each
    // request would log an ERROR inside openraft, dozens a second.
    if let Err(e) = &raft.metrics().borrow_watched().running_state {
        return Err(format!("node stopped: {e}"));
    }
    match &rpc {
        Rpc::Append(req) => sane_vote(&req.vote)?,
        Rpc::Vote(req) | Rpc::PreVote(req) => sane_vote(&req.vote)?,
        Rpc::Snapshot { vote, .. }
        | Rpc::SnapshotChunk { vote, .. }
        | Rpc::SnapshotDone { vote, .. } => sane_vote(vote)?,
        _ => {}
    }
    match rpc {
        Rpc::Append(req) => {
            let t = crate::probe::start();
            let stage = match req.entries.is_empty() {
                false => crate::probe::Stage::FollowerAppend,
                true => crate::probe::Stage::FollowerAppendEmpty,
            };
            let (term, leader) = (req.vote.leader_id.term, req.vote.leader_id.node_id);
            let commit = req.leader_commit.map(|l| l.index);
            let r = raft.append_entries(req).await;
            crate::probe::since(stage, t);
            if matches!(&r, Ok(resp) if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                contact.heard(term, leader, commit);
            }
            encode(&r)
        }
        Rpc::Vote(req) => encode(&raft.vote(req).await),
        Rpc::PreVote(req) => encode(&raft.pre_vote(req).await),
        Rpc::Snapshot { vote, meta, data } => {
            let snap = take_whole(&sm, data).await?;
            install_snapshot(raft, sm, vote, meta, snap).await
        }
        Rpc::SnapshotChunk {
            transfer,
            offset,
            data,
            ..
        } => encode(&take_chunk(&sm, &receiving, transfer, offset, data).await),
        Rpc::SnapshotDone {
            vote,
            transfer,
            len,
            meta,
        } => match take_done(&receiving, transfer, len).await {
            Ok(snap) => install_snapshot(raft, sm, vote, meta, snap).await,
            Err(e) => encode(&Err::<SnapshotResponse<TC>, String>(e)),
        },
        Rpc::Write(env) => encode(&leader::write(&raft, &compat, env, None).await),
        Rpc::WriteMany(envs) => encode(&leader::write_many(&raft, &compat, envs).await),
        Rpc::ReadIndex => encode(&leader::read_index(&raft).await),
        Rpc::AddNode { id, addr } => {
            encode(&leader::add_node(&raft, &peers, id, addr, voters).await)
        }
        Rpc::RemoveNode { id } => encode(&leader::remove_node(&raft, id, voters).await),
        Rpc::Capabilities => encode(&compat::answer()),
        Rpc::PoisonReport { index, promise } => {
            encode(&Ok::<_, String>(poison::answer(&sm, index, promise)))
        }
        Rpc::Quarantine { index } => {
            let id = raft.metrics().borrow_watched().id;
            encode(&poison::propose(id, &raft, &sm, index).await)
        }
        // taken in `call`, in order
        Rpc::AppendPipe { .. } => Err("bad request: misrouted pipelined append".into()),
    }
}

impl RaftService {
    /// Queues a pipelined append on its lane (`raft/pipe.rs`) and answers
    /// once openraft has.
    fn pipelined(
        &self,
        run: &Running,
        from: u64,
        lane: u64,
        seq: u64,
        req: openraft::raft::AppendEntriesRequest<TC>,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        if let Err(e) = &run.raft.metrics().borrow_watched().running_state {
            return futures::future::ready(Err(format!("node stopped: {e}"))).boxed();
        }
        if let Err(e) = sane_vote(&req.vote) {
            return futures::future::ready(Err(e)).boxed();
        }
        let t = crate::probe::start();
        let stage = match req.entries.is_empty() {
            false => crate::probe::Stage::FollowerAppend,
            true => crate::probe::Stage::FollowerAppendEmpty,
        };
        let rx = self
            .pipes
            .submit(&run.raft, &self.contact, from, lane, seq, req);
        async move {
            let reply: PipeReply = rx
                .await
                .unwrap_or_else(|_| Err("the replication stream ended".into()));
            crate::probe::since(stage, t);
            encode(&reply)
        }
        .boxed()
    }
}

impl Service for RaftService {
    fn call(&self, from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let rpc: Rpc = match decode(&body) {
            Ok(r) => r,
            Err(e) => return futures::future::ready(Err(format!("bad request: {e}"))).boxed(),
        };
        if let Rpc::Capabilities = rpc {
            return futures::future::ready(encode(&compat::answer())).boxed();
        }
        let Some(run) = self.raft.get() else {
            return futures::future::ready(Err("node is starting".to_string())).boxed();
        };
        if let Rpc::AppendPipe { lane, seq, req } = rpc {
            return self.pipelined(run, from, lane, seq, req);
        }
        handle(
            run.clone(),
            self.contact.clone(),
            self.receiving.clone(),
            rpc,
        )
        .boxed()
    }
}
