//! What the leader does with requests that reach it, from its own node or
//! forwarded by a follower: writes, read indexes and membership changes.
//! Each answers with a [`Redirect`] so the caller knows whether to retry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, PreconditionFailed, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy};

use super::compat::Compat;
use super::network::PeerLog;
use super::voters::{self, Peer};
use super::wire::Redirect;
use super::{LogId, Raft};
use crate::machine::{Applied, EntryKind, Envelope};

/// A new node is given up (and removed again) when its replication makes no
/// progress (no entry matched, no snapshot chunk taken) for this long. It
/// may take as long as it needs while it progresses: a big state streams
/// for a while.
const CATCH_UP_STALL: Duration = Duration::from_secs(15);

/// The leader's wall clock in milliseconds since the Unix epoch: it stamps
/// every entry it proposes, so one skewed client cannot move the log clock
/// that expires dedup records.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_error(e: ClientWriteError<super::TC>) -> Redirect<Applied> {
    match e {
        ClientWriteError::ForwardToLeader(f) => Redirect::NotLeader(f.leader_id),
        ClientWriteError::LogEntryDiscarded(f) => {
            Redirect::Unknown(format!("entry discarded by a leader change: {f}"))
        }
        e => Redirect::Failed(e.to_string()),
    }
}

/// Refuses an entry that a member cannot apply (see `raft/compat.rs`).
async fn check_known<T>(raft: &Raft, compat: &Compat, env: &Envelope) -> Result<(), Redirect<T>> {
    compat
        .check(raft, &env.name, env.kind == EntryKind::Event)
        .await
        .map_err(|nodes| Redirect::NotUpgraded {
            name: env.name.clone(),
            nodes,
        })
}

/// Proposes one write and waits for its result. `admitted`: when the
/// caller's `send` began, if probing (see `crate::probe`).
pub(crate) async fn write(
    raft: &Raft,
    compat: &Compat,
    mut env: Envelope,
    admitted: Option<Instant>,
) -> Redirect<Applied> {
    if let Err(refused) = check_known(raft, compat, &env).await {
        return refused;
    }
    env.time_ms = now_ms();
    crate::probe::since(crate::probe::Stage::Admit, admitted);
    let t = crate::probe::start();
    let r = raft.client_write(env).await;
    crate::probe::since(crate::probe::Stage::Commit, t);
    match r {
        Ok(resp) => Redirect::Ok(resp.data),
        Err(RaftError::APIError(e)) => write_error(e),
        Err(RaftError::Fatal(e)) => Redirect::Unknown(format!("leader stopped: {e}")),
    }
}

/// Proposes a forwarded batch together; answers in order.
pub(crate) async fn write_many(
    raft: &Raft,
    compat: &Compat,
    envs: Vec<Envelope>,
) -> Vec<Redirect<Applied>> {
    // refuse only the entries a member cannot apply; propose the others
    let mut verdicts: HashMap<(String, EntryKind), Result<(), Vec<u64>>> = HashMap::new();
    let mut answers: Vec<Option<Redirect<Applied>>> = Vec::with_capacity(envs.len());
    let mut proposed = Vec::with_capacity(envs.len());
    for env in envs {
        let key = (env.name.clone(), env.kind);
        let verdict = match verdicts.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = compat
                    .check(raft, &env.name, env.kind == EntryKind::Event)
                    .await;
                verdicts.insert(key, v.clone());
                v
            }
        };
        match verdict {
            Ok(()) => {
                answers.push(None);
                proposed.push(env);
            }
            Err(nodes) => answers.push(Some(Redirect::NotUpgraded {
                name: env.name,
                nodes,
            })),
        }
    }
    let mut results = propose_many(raft, proposed).await.into_iter();
    answers
        .into_iter()
        .map(|a| {
            a.or_else(|| results.next())
                .unwrap_or_else(|| Redirect::Unknown("no answer from the leader".into()))
        })
        .collect()
}

async fn propose_many(raft: &Raft, mut envs: Vec<Envelope>) -> Vec<Redirect<Applied>> {
    let n = envs.len();
    if n == 0 {
        return Vec::new();
    }
    let now = now_ms();
    for e in &mut envs {
        e.time_ms = now;
    }
    let mut answers = Vec::with_capacity(n);
    match raft.client_write_many(envs).await {
        Ok(mut results) => {
            while let Some(r) = results.next().await {
                answers.push(match r {
                    Ok(Ok(w)) => Redirect::Ok(w.response),
                    Ok(Err(e)) => write_error(e),
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

/// A read index: the log id that a linearizable read must wait for. The one
/// path for reads on the leader itself and for followers' reads.
pub(crate) async fn read_index(raft: &Raft) -> Redirect<LogId> {
    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
        Ok(lin) => Redirect::Ok(*lin.read_log_id().log_id()),
        Err(e) => match e.forward_to_leader() {
            Some(f) => Redirect::NotLeader(f.leader_id),
            None => Redirect::Unknown(e.to_string()),
        },
    }
}

/// Adds a node as a learner, waits until it replicates, then makes it a
/// voter if the voter count stays odd.
/// `target`: the most voters the cluster keeps (`usize::MAX`: no limit);
/// the count stays odd, so the node may stay a learner (see `voters.rs`).
pub(crate) async fn add_node(
    raft: &Raft,
    peers: &PeerLog,
    id: u64,
    addr: String,
    target: usize,
) -> Redirect<()> {
    peers.forget(id);
    let added = match raft
        .add_learner(id, BasicNode::new(addr.clone()), false)
        .await
    {
        Ok(r) => r.log_id.index,
        Err(e) => return membership_refused(e),
    };
    // Promote only a learner that really replicates: one that is down or
    // fails the handshake would otherwise count in the quorum.
    let mut metrics = raft.metrics();
    let mut matched = None;
    let mut moved = Instant::now();
    loop {
        let (now_matched, leader) = {
            let m = metrics.borrow_watched();
            let r = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|l| l.index);
            (r, m.current_leader)
        };
        if now_matched.is_some_and(|i| i >= added) {
            break;
        }
        if leader != Some(raft_id(raft)) {
            return Redirect::Unknown(format!(
                "leadership changed while node {id} was catching up; it may stay a learner: \
                 add it again"
            ));
        }
        if now_matched != matched {
            matched = now_matched;
            moved = Instant::now();
        }
        let note = peers.note(id);
        if let Some(p) = note.progress.filter(|p| *p > moved) {
            moved = p;
        }
        if moved.elapsed() >= CATCH_UP_STALL {
            let set: BTreeSet<u64> = [id].into();
            let removed = raft
                .change_membership(ChangeMembers::RemoveNodes(set), false)
                .await;
            let cause = note
                .error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            let removed = match removed {
                Ok(_) => "it was removed again".to_string(),
                Err(e) => format!("removing it again failed too: {e}"),
            };
            tracing::warn!(node = id, %addr, "adding node {id} failed{cause}; {removed}");
            return Redirect::Failed(format!(
                "node {id} at {addr} made no progress catching up for {CATCH_UP_STALL:?}{cause}; \
                 {removed}. Is it running, reachable, and configured with the same secret?"
            ));
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), metrics.changed()).await;
    }
    // it replicates: promote it if that keeps the voter count odd (with
    // a learner a leave left, say), else it waits as a learner for the
    // next node that joins
    let now = membership_now(raft);
    let plan = voters::plan(
        now.me,
        &now.voters,
        &now.learners,
        &now.peers,
        None,
        Some(id),
        target,
    );
    if plan.voters == now.voters {
        tracing::info!(
            node = id,
            voters = now.voters.len(),
            "node {id} caught up; it stays a learner until another node joins (the voter count \
             stays odd{})",
            if target == usize::MAX {
                String::new()
            } else {
                format!(", at most {target}")
            }
        );
        return Redirect::Ok(());
    }
    tracing::info!(
        node = id,
        promoted = ?plan.promoted,
        demoted = ?plan.demoted,
        "node {id} caught up: voters {:?}",
        plan.voters
    );
    let retain = !plan.demoted.is_empty();
    membership_change(raft, ChangeMembers::ReplaceAllVoters(plan.voters), retain).await
}

fn raft_id(raft: &Raft) -> u64 {
    raft.metrics().borrow_watched().id
}

/// What the odd voter rule decides from: this leader's id, the voters,
/// the learners, and each other member's lag and reachability (it
/// acknowledged a heartbeat or an append within two election timeouts).
struct Now {
    me: u64,
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
    peers: BTreeMap<u64, Peer>,
}

fn membership_now(raft: &Raft) -> Now {
    use openraft::Instant as _;
    let recent = Duration::from_millis(raft.config().election_timeout_max.saturating_mul(2));
    let m = raft.metrics();
    let m = m.borrow_watched();
    let membership = m.membership_config.membership();
    let last = m.last_log_index.unwrap_or(0);
    let peers = membership
        .nodes()
        .map(|(id, _)| {
            let lag = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map(|matched| last.saturating_sub(matched.index))
                .unwrap_or(u64::MAX);
            let reachable = m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .is_some_and(|at| at.elapsed() <= recent);
            (*id, Peer { lag, reachable })
        })
        .collect();
    Now {
        me: m.id,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        peers,
    }
}

/// Removes a node from the membership: from the voters first if it is
/// one, then from the nodes (so it no longer receives the log). The voters
/// left stay odd (`voters.rs`), in the same change: a caught-up learner
/// takes the removed voter's place if there is one (a cluster that already
/// misses a voter keeps its quorum through the change), else one more
/// voter becomes a learner (it is promoted again with the next node that
/// joins). `target`: the most voters the cluster keeps.
pub(crate) async fn remove_node(raft: &Raft, id: u64, target: usize) -> Redirect<()> {
    let set: BTreeSet<u64> = [id].into();
    let now = membership_now(raft);
    let known = now.voters.contains(&id) || now.learners.contains(&id);
    let plan = voters::plan(
        now.me,
        &now.voters,
        &now.learners,
        &now.peers,
        Some(id),
        None,
        target,
    );
    if plan.voters != now.voters {
        if !plan.promoted.is_empty() || !plan.demoted.is_empty() {
            tracing::info!(
                removed = id,
                promoted = ?plan.promoted,
                demoted = ?plan.demoted,
                voters = ?plan.voters,
                "removing node {id}; the voter count stays odd"
            );
        }
        // a demoted voter stays a learner (`retain`); then the removed
        // node, if it is still one, leaves the nodes below
        let retain = !plan.demoted.is_empty();
        match membership_change(raft, ChangeMembers::ReplaceAllVoters(plan.voters), retain).await {
            Redirect::Ok(()) => {}
            other => return other,
        }
        // without `retain` a removed voter leaves the nodes too, and
        // there is nothing left to do
        if raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .is_none()
        {
            return Redirect::Ok(());
        }
    } else if !known {
        return Redirect::Ok(());
    }
    membership_change(raft, ChangeMembers::RemoveNodes(set), false).await
}

/// Adds a node as a learner without waiting for it to catch up.
pub(crate) async fn add_learner(raft: &Raft, id: u64, addr: String) -> Redirect<()> {
    match raft.add_learner(id, BasicNode::new(addr), false).await {
        Ok(_) => Redirect::Ok(()),
        Err(e) => membership_refused(e),
    }
}

/// Makes a learner a voter.
pub(crate) async fn promote(raft: &Raft, ids: Vec<u64>) -> Redirect<()> {
    membership_change(
        raft,
        ChangeMembers::AddVoterIds(ids.into_iter().collect()),
        false,
    )
    .await
}

/// `retain`: voters that leave the voter set stay as learners.
async fn membership_change(
    raft: &Raft,
    change: ChangeMembers<u64, openraft::BasicNode>,
    retain: bool,
) -> Redirect<()> {
    match raft.change_membership(change, retain).await {
        Ok(_) => Redirect::Ok(()),
        Err(e) => membership_refused(e),
    }
}

/// A membership change openraft did not make: another node leads (go
/// there), another change is still uncommitted or came first (nothing was
/// proposed: the caller tries again, see `RaftHandle::route`, until its
/// timeout), or a refusal for good.
fn membership_refused(e: RaftError<super::TC, ClientWriteError<super::TC>>) -> Redirect<()> {
    if let Some(f) = e.forward_to_leader() {
        return Redirect::NotLeader(f.leader_id);
    }
    match e.api_error() {
        Some(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            Redirect::Unknown(format!(
                "another membership change is in progress ({p}); waiting for it"
            ))
        }
        // the change was computed from a membership that another change
        // replaced in between: computed again on the next try
        Some(ClientWriteError::PreconditionFailed(
            p @ PreconditionFailed::LastMembershipLogIdMismatch { .. },
        )) => Redirect::Unknown(format!(
            "another membership change came first ({p}); trying again"
        )),
        _ => Redirect::Failed(e.to_string()),
    }
}
