//! The follower's end of pipelined replication ([`Rpc::AppendPipe`]): the
//! leader sends several AppendEntries to this node without waiting for each
//! answer, numbered within a *lane* (one replication stream of one leader);
//! here they are put back in order and handed to openraft's
//! `Raft::stream_append`, which submits each to the log as it arrives and
//! answers in order once it is durable. So this node's fsync of one batch
//! overlaps the arrival of the next, and a write never waits for the
//! previous round trip to a follower to end.
//!
//! Requests of one lane may arrive out of order (the transport runs each
//! request in its own task; a reconnect may take another connection): an
//! early one waits for the ones before it. A request that never comes (its
//! connection died) stalls only its lane: the leader sees that request fail,
//! ends the stream and starts a new lane, which replaces this one (its
//! waiting requests are answered with an error). A lane once replaced never
//! comes back, so a late request of an old lane is refused, not replayed.
//!
//! [`Rpc::AppendPipe`]: super::wire::Rpc::AppendPipe

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::contact::LeaderContact;
use super::{Raft, TC};

/// What this node answers to one pipelined request.
pub(crate) type PipeReply = Result<StreamAppendResult<TC>, String>;

type Req = AppendEntriesRequest<TC>;

/// The most requests of a lane held while an earlier one is missing.
const MAX_EARLY: usize = 256;
/// Lanes remembered as replaced, per leader (so a late request of one is
/// refused rather than starting it again).
const RETIRED_KEPT: usize = 16;

/// Every lane this node serves, by the leader node that opened it.
#[derive(Default)]
pub(crate) struct Pipes {
    peers: Mutex<HashMap<u64, Peer>>,
}

#[derive(Default)]
struct Peer {
    lane: Option<Lane>,
    retired: VecDeque<u64>,
}

struct Lane {
    id: u64,
    /// The next sequence number to hand to openraft.
    next: u64,
    /// Requests that came before their turn.
    early: BTreeMap<u64, (Req, oneshot::Sender<PipeReply>)>,
    to_raft: mpsc::UnboundedSender<(Req, oneshot::Sender<PipeReply>)>,
}

impl Pipes {
    /// Queues request `seq` of lane `lane` from `from`; the receiver gets
    /// its answer once openraft has it (after every earlier one's).
    pub(crate) fn submit(
        &self,
        raft: &Raft,
        contact: &Arc<LeaderContact>,
        from: u64,
        lane: u64,
        seq: u64,
        req: Req,
    ) -> oneshot::Receiver<PipeReply> {
        let (tx, rx) = oneshot::channel();
        let mut peers = self.peers.lock();
        let peer = peers.entry(from).or_default();
        if peer.retired.contains(&lane) {
            let _ = tx.send(Err(format!(
                "replication lane {lane:x} was replaced by a newer one"
            )));
            return rx;
        }
        if peer.lane.as_ref().is_none_or(|l| l.id != lane) {
            if let Some(old) = peer.lane.take() {
                // its waiting requests are answered by the drop (an error)
                peer.retired.push_back(old.id);
                if peer.retired.len() > RETIRED_KEPT {
                    peer.retired.pop_front();
                }
            }
            tracing::debug!(
                leader = from,
                lane = format_args!("{lane:x}"),
                "replication lane opened"
            );
            peer.lane = Some(Lane::open(raft.clone(), contact.clone(), lane));
        }
        let Some(l) = peer.lane.as_mut() else {
            return rx;
        };
        l.take(seq, req, tx);
        rx
    }
}

impl Lane {
    fn open(raft: Raft, contact: Arc<LeaderContact>, id: u64) -> Lane {
        let (to_raft, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(raft, contact, rx));
        Lane {
            id,
            next: 0,
            early: BTreeMap::new(),
            to_raft,
        }
    }

    fn take(&mut self, seq: u64, req: Req, tx: oneshot::Sender<PipeReply>) {
        if seq < self.next || self.early.contains_key(&seq) {
            let _ = tx.send(Err(format!("replication request {seq} came twice")));
            return;
        }
        if seq > self.next {
            tracing::trace!(seq, next = self.next, "replication request came early");
            if self.early.len() >= MAX_EARLY {
                let _ = tx.send(Err(format!(
                    "replication request {seq} came too early (waiting for {})",
                    self.next
                )));
            } else {
                self.early.insert(seq, (req, tx));
            }
            return;
        }
        let _ = self.to_raft.send((req, tx));
        self.next += 1;
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let _ = self.to_raft.send(entry.remove());
            self.next += 1;
        }
    }
}

/// Feeds one lane's requests, in order, to openraft and answers each in
/// order. Ends when the lane is replaced (its sender dropped) and the
/// answers are out, or when openraft ends the stream (a conflict, a higher
/// vote, Raft stopped): then every request still queued gets an error.
async fn serve(
    raft: Raft,
    contact: Arc<LeaderContact>,
    mut rx: mpsc::UnboundedReceiver<(Req, oneshot::Sender<PipeReply>)>,
) {
    let (input, requests) = mpsc::unbounded_channel::<Req>();
    let mut out = std::pin::pin!(raft.stream_append(stream_of(requests)));
    // Raft stopping (a shutdown, a storage failure) ends the lane too
    // (watched on the server metrics: the full ones change with every
    // append, and a watcher of them would be woken, and clone them, each time)
    let stopped = super::handle::core_ended(&raft);
    let mut stopped = std::pin::pin!(stopped);
    // answers owed, in order: who asked, and what to note if it succeeds
    let mut owed: VecDeque<(oneshot::Sender<PipeReply>, u64, u64, Option<u64>)> = VecDeque::new();
    let mut open = true;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            next = rx.recv(), if open => match next {
                Some((req, tx)) => {
                    let (term, leader) = (req.vote.leader_id.term, req.vote.leader_id.node_id);
                    let commit = req.leader_commit.map(|l| l.index);
                    owed.push_back((tx, term, leader, commit));
                    if input.send(req).is_err() {
                        break;
                    }
                }
                None => {
                    open = false;
                    if owed.is_empty() {
                        break;
                    }
                }
            },
            r = out.next(), if !owed.is_empty() => {
                let Some(r) = r else { break };
                let Some((tx, term, leader, commit)) = owed.pop_front() else { break };
                let reply = match r {
                    Ok(Ok(matched)) => {
                        contact.heard(term, leader, commit);
                        Ok(Ok(matched))
                    }
                    Ok(Err(refused)) => Ok(Err(refused)),
                    Err(fatal) => Err(format!("node stopped: {fatal}")),
                };
                let ended = !matches!(reply, Ok(Ok(_)));
                let _ = tx.send(reply);
                if ended {
                    break;
                }
                if !open && owed.is_empty() {
                    break;
                }
            }
        }
    }
    for (tx, ..) in owed {
        let _ = tx.send(Err("the replication stream ended".into()));
    }
}

/// An unbounded receiver as a stream.
fn stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
