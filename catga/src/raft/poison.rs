//! Poison pills: a log entry whose handler kills the process (an abort, a
//! stack overflow, a failed allocation) on every replica. No `catch_unwind`
//! stops that, and a restarted node replays the entry and dies again. This
//! module decides, for one node, whether to run such an entry again, and,
//! for the cluster, when to stop running it anywhere.
//!
//! # The rule on one node
//!
//! The marker (`raft/applier.rs`) tells a restarted node which entry N it
//! died inside and how many runs in a row died there (`died`):
//! - died once: N is run again at once (a crash that had nothing to do with
//!   the entry: the OOM killer, a `kill -9`, an unlucky moment);
//! - died twice or more: the node **stalls before N**. It keeps its Raft
//!   role (it votes, replicates, may lead), serves local reads (of the state
//!   before N), reports `ready = false` and `Health::poisoned`, and applies
//!   nothing from N on until the cluster decides (below);
//! - a new program (another executable than the one that died; a fix was
//!   deployed) gets one more try, and so does a node restarted while it
//!   stalled, unless it has promised (below) not to.
//!
//! # The decision, for the cluster
//!
//! A stalled node asks every member (voters and learners) with
//! [`Rpc::PoisonReport`](super::wire::Rpc::PoisonReport) what it did with
//! N, every [`POLL`]:
//! - a member applied N (and not as quarantined): the crashes here were
//!   local (this host). N is never skipped here: the node stays stalled,
//!   says so, and runs N again once it is restarted (a promise it made is
//!   released). If it leads, it hands leadership to a member that applied N.
//! - every member stalls before the same N (none applied it) and, asked
//!   with `promise`, each promised, durably, never to run N on its own
//!   again: the leader (automatic mode), or an operator's
//!   [`Node::skip_poisoned`](crate::Node::skip_poisoned) (manual mode),
//!   proposes a decision entry D (`machine::Quarantine { index: N }`), after
//!   N in the log, if the membership is still the one that was asked.
//!
//! A promise is what makes the decision safe: a node that promised cannot
//! run N later (a restart, a new program) while D is on its way, so when D
//! commits no member has applied N, and every member applies N as
//! [`ApplyError::Poisoned`](crate::ApplyError::Poisoned) (recorded in the
//! dedup table like any answer) and D as nothing.
//!
//! # How a stalled apply sees D
//!
//! D comes after N in the log, and openraft hands entries to the state
//! machine in order: the apply loop, stopped before N, waits on the log
//! store's committed index and looks in the log for a committed decision
//! naming N ([`LogStore::decision_for`], which indexes decisions as they
//! are appended). Every node, before it applies an entry, looks there too,
//! so a node that replays the log later (a restart, a lagging follower)
//! quarantines N as well. At start, openraft replays the committed log
//! before the node runs: a node that stalls before N starts from a
//! committed index below N ([`LogStore::start_committed_below`]) and learns
//! the rest from the leader, so it starts, answers and votes.
//!
//! Left open: a node added *after* the decision that replays the log from
//! before N and has not yet received D when it reaches N runs N; with the
//! same program it dies and stalls, then sees D; with a program in which N
//! does not crash it would apply N. A snapshot taken after D (the normal
//! snapshot policy) ends that window once the log before it is purged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Raft;
use super::applier::{InProgress, Marker};
use super::state_machine::SmStore;
use super::wire::{Redirect, Rpc, decode, encode};
use crate::machine::Quarantine;
use crate::transport::Pool;

/// How often a stalled node asks the members what they did with its entry.
pub(crate) const POLL: Duration = Duration::from_millis(300);
/// The deadline of one question.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a proposer waits for its decision to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who decides to quarantine an entry every member stalls before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// The leader, as soon as every member promised.
    #[default]
    Automatic,
    /// An operator, with `Node::skip_poisoned`.
    Manual,
}

/// What a node does at start with the entry its previous run left in the
/// marker (see the module's head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Run the entry again; `died` runs died inside it so far.
    Retry { died: u32 },
    /// Stop before it.
    Stall { died: u32, promised: bool },
}

/// The rule, from the marker's record and this program's id.
pub(crate) fn start_rule(prev: &InProgress, exe: u64) -> Start {
    let new_program = prev.exe != 0 && prev.exe != exe;
    if prev.stalled {
        if prev.promised {
            return Start::Stall {
                died: prev.died,
                promised: true,
            };
        }
        // restarted while stalled: the operator's (or a supervisor's) new try
        return Start::Retry { died: prev.died };
    }
    let died = prev.died.saturating_add(1);
    if died >= 2 && !new_program {
        Start::Stall {
            died,
            promised: false,
        }
    } else {
        Start::Retry { died }
    }
}

/// What one node did with an entry, as it answers [`Rpc::PoisonReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Its applied index.
    pub(crate) applied: u64,
    /// The entry it stalls before, if any: index and wire name.
    pub(crate) stalled: Option<(u64, String)>,
    /// It promised not to run that entry on its own.
    pub(crate) promised: bool,
    /// It applied the asked entry as quarantined.
    pub(crate) quarantined: bool,
}

/// The entry this node stalls before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    pub(crate) index: u64,
    pub(crate) name: String,
    pub(crate) died: u32,
    pub(crate) promised: bool,
    /// Members that applied it (so the crashes here were local).
    pub(crate) applied_on: Vec<u64>,
}

/// This node's poison state (in the state machine's shared part).
#[derive(Default)]
pub(crate) struct Poison {
    /// Raft's connection pool, to ask the members (set once the node runs).
    pool: std::sync::OnceLock<Pool>,
    stop: Mutex<Option<Stop>>,
    /// The entry run again after deaths, and how many runs died in it.
    retry: Mutex<Option<(u64, u32)>>,
}

impl Poison {
    /// Reads the marker's record at start (`applied`: what the snapshot
    /// covers; an entry at or below it is done). Returns the state and the
    /// entry to stop before, if any.
    pub(crate) fn open(prev: Option<InProgress>, applied: u64, marker: &Marker) -> Poison {
        let p = Poison::default();
        let Some(prev) = prev.filter(|p| p.index > applied) else {
            return p;
        };
        let (index, name) = (prev.index, prev.name.clone());
        match start_rule(&prev, marker.exe()) {
            Start::Retry { died } => {
                if died > 0 {
                    tracing::error!(
                        index,
                        message = %name,
                        died,
                        "the previous run of this node stopped while applying log entry {index} \
                         (`{name}`); running it again once. If it crashed there (stack overflow, \
                         allocation failure, abort) it crashes again, and this node then stops \
                         before the entry and the cluster decides (see \"Poison pills\" in the \
                         operations guide)"
                    );
                } else {
                    tracing::warn!(
                        index,
                        message = %name,
                        "this node was restarted while stopped before log entry {index} \
                         (`{name}`): running it again once"
                    );
                }
                *p.retry.lock() = Some((index, died));
            }
            Start::Stall { died, promised } => {
                tracing::error!(
                    index,
                    message = %name,
                    died,
                    "the previous run of this node stopped while applying log entry {index} \
                     (`{name}`), {died} runs in a row: this node stops before it (a poison pill). \
                     It serves local reads and keeps its Raft role; the cluster quarantines the \
                     entry once every member stops before it, or this node runs it again once \
                     another member has applied it and this node is restarted (see \"Poison \
                     pills\" in the operations guide)"
                );
                let _ = marker.stalled(index, &name, died, promised);
                *p.stop.lock() = Some(Stop {
                    index,
                    name,
                    died,
                    promised,
                    applied_on: Vec::new(),
                });
            }
        }
        p
    }

    /// Gives the pool to ask the members with (once, at start).
    pub(crate) fn set_pool(&self, pool: Pool) {
        let _ = self.pool.set(pool);
    }

    /// The entry this node stalls before, if any.
    pub(crate) fn stop(&self) -> Option<Stop> {
        self.stop.lock().clone()
    }

    /// Whether the apply loop must stop before `index`.
    pub(crate) fn stops_before(&self, index: u64) -> bool {
        self.stop.lock().as_ref().is_some_and(|s| s.index == index)
    }

    /// How many runs died inside `index` (for the marker).
    pub(crate) fn died_in(&self, index: u64) -> u32 {
        match *self.retry.lock() {
            Some((i, d)) if i == index => d,
            _ => 0,
        }
    }

    /// `index` was applied (run, or quarantined): nothing stops before it.
    pub(crate) fn applied(&self, index: u64) {
        let mut r = self.retry.lock();
        if r.is_some_and(|(i, _)| i <= index) {
            *r = None;
        }
        let mut s = self.stop.lock();
        if s.as_ref().is_some_and(|s| s.index <= index) {
            *s = None;
        }
    }

    /// Rewrites the marker's record of the entry this node stops before,
    /// if any (after a batch wrote other records); whether there was one.
    pub(crate) fn keep_marker(&self, marker: &Marker) -> bool {
        let g = self.stop.lock();
        match g.as_ref() {
            Some(s) => {
                let _ = marker.stalled(s.index, &s.name, s.died, s.promised);
                true
            }
            None => false,
        }
    }

    /// Answers a member's question about entry `index`; with `promise`, a
    /// node stalled before it (its apply loop there: everything before it
    /// applied) promises, durably, before it answers, never to run it on
    /// its own.
    pub(crate) fn report(
        &self,
        marker: &Marker,
        applied: u64,
        index: u64,
        promise: bool,
        quarantined: bool,
    ) -> Report {
        let mut g = self.stop.lock();
        if let Some(s) = g.as_mut()
            && promise
            && s.index == index
            && applied.saturating_add(1) == index
            && !s.promised
            && s.applied_on.is_empty()
        {
            match marker.stalled(s.index, &s.name, s.died, true) {
                Ok(()) => s.promised = true,
                Err(e) => tracing::warn!(error = %e, "could not record a promise"),
            }
        }
        Report {
            applied,
            stalled: g.as_ref().map(|s| (s.index, s.name.clone())),
            promised: g.as_ref().is_some_and(|s| s.promised),
            quarantined,
        }
    }

    /// Members applied the entry this node stalls before: its crashes were
    /// local. Releases a promise; the entry runs again at the next start.
    fn applied_elsewhere(&self, marker: &Marker, index: u64, on: Vec<u64>) {
        let mut g = self.stop.lock();
        let Some(s) = g.as_mut().filter(|s| s.index == index) else {
            return;
        };
        if s.applied_on.is_empty() {
            tracing::error!(
                index,
                message = %s.name,
                nodes = ?on,
                "log entry {index} (`{}`) was applied on node(s) {on:?}: the crashes here were \
                 local to this node (memory? disk? host?). It is not skipped: fix the cause \
                 and restart this node, which runs it again",
                s.name
            );
        }
        if s.promised {
            match marker.stalled(s.index, &s.name, s.died, false) {
                Ok(()) => s.promised = false,
                Err(e) => tracing::warn!(error = %e, "could not release a promise"),
            }
        }
        s.applied_on = on;
    }
}

/// This node's answer to [`Rpc::PoisonReport`].
pub(crate) fn answer(sm: &SmStore, index: u64, promise: bool) -> Report {
    let shared = &sm.shared;
    let applied = *shared.applied.borrow();
    let quarantined = shared.inner.read().machine.was_quarantined(index);
    shared
        .poison
        .report(&shared.marker, applied, index, promise, quarantined)
}

/// The members (voters and learners) with their addresses, and the
/// membership's log id.
fn members(raft: &Raft) -> (BTreeMap<u64, String>, Option<super::LogId>) {
    let m = raft.metrics();
    let m = m.borrow_watched();
    let nodes = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    (nodes, *m.membership_config.log_id())
}

/// What the members said about entry `index`.
struct Round {
    members: BTreeMap<u64, String>,
    reports: BTreeMap<u64, Result<Report, String>>,
}

impl Round {
    /// Members that applied the entry and did not quarantine it.
    fn ran(&self, index: u64) -> Vec<u64> {
        self.reports
            .iter()
            .filter_map(|(id, r)| match r {
                Ok(r) if r.applied >= index && !r.quarantined => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Why the entry cannot be quarantined now (`None`: it can).
    fn refusal(&self, index: u64, name: &str) -> Option<String> {
        let mut why = Vec::new();
        for id in self.members.keys() {
            match self.reports.get(id) {
                None => why.push(format!("node {id} was not asked")),
                Some(Err(e)) => why.push(format!("node {id} did not answer ({e})")),
                Some(Ok(r)) if r.applied >= index => {
                    why.push(format!("node {id} applied it"));
                }
                Some(Ok(r)) => match &r.stalled {
                    Some((i, n)) if *i == index && n == name && r.promised => {}
                    Some((i, n)) if *i == index && n == name => {
                        why.push(format!("node {id} did not promise"))
                    }
                    Some((i, n)) => why.push(format!("node {id} stops before entry {i} (`{n}`)")),
                    None => why.push(format!(
                        "node {id} does not stop before it (applied up to {})",
                        r.applied
                    )),
                },
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Asks every member (this node locally) what it did with `index`.
async fn ask(id: u64, raft: &Raft, sm: &SmStore, index: u64, promise: bool) -> Round {
    let (members, _) = members(raft);
    let pool = sm.shared.poison.pool.get();
    let body = encode(&Rpc::PoisonReport { index, promise });
    let calls = members.iter().map(|(peer, addr)| {
        let body = body.clone();
        async move {
            if *peer == id {
                return (*peer, Ok(answer(sm, index, promise)));
            }
            let (body, pool) = match (body, pool) {
                (Ok(b), Some(p)) => (b, p),
                (Err(e), _) => return (*peer, Err(e)),
                (_, None) => return (*peer, Err("this node is starting".to_string())),
            };
            let r = match pool.call(*peer, addr, body, ASK_TIMEOUT).await {
                Ok(bytes) => decode::<Result<Report, String>>(&bytes).and_then(|r| r),
                Err(e) => Err(e.to_string()),
            };
            (*peer, r)
        }
    });
    let reports = futures::future::join_all(calls).await.into_iter().collect();
    Round { members, reports }
}

/// Asks every member with a promise; `Ok((name, members))` when every
/// member stalls before the same `index` and promised (none applied it),
/// and the membership did not change meanwhile.
async fn gather(
    id: u64,
    raft: &Raft,
    sm: &SmStore,
    index: u64,
) -> Result<(String, Vec<u64>), String> {
    let name = sm
        .shared
        .poison
        .stop()
        .filter(|s| s.index == index)
        .map(|s| s.name)
        .ok_or_else(|| format!("the leader does not stop before log entry {index}"))?;
    let (_, before) = members(raft);
    let round = ask(id, raft, sm, index, true).await;
    let (_, after) = members(raft);
    if before != after {
        return Err("the membership changed while the members were asked; try again".into());
    }
    match round.refusal(index, &name) {
        Some(why) => Err(why),
        None => Ok((name, round.members.keys().copied().collect())),
    }
}

/// On the leader: asks every member to promise not to run `index`, and if
/// each stops before it and promised, proposes the decision to quarantine
/// it and waits until it commits here.
pub(crate) async fn propose(id: u64, raft: &Raft, sm: &SmStore, index: u64) -> Redirect<()> {
    let leads = || {
        let m = raft.metrics();
        let m = m.borrow_watched();
        match m.current_leader == Some(id) && m.state == openraft::ServerState::Leader {
            true => None,
            false => Some(m.current_leader),
        }
    };
    if let Some(l) = leads() {
        return Redirect::NotLeader(l);
    }
    if sm.shared.log.decision_for(index).is_none() {
        let (name, asked) = match gather(id, raft, sm, index).await {
            Ok(g) => g,
            Err(why) => return Redirect::Failed(why),
        };
        let (members, _) = members(raft);
        let now: BTreeSet<u64> = members.keys().copied().collect();
        if now != asked.iter().copied().collect() {
            return Redirect::Failed(format!(
                "the members are {now:?} now, not the {asked:?} that were asked; try again"
            ));
        }
        if let Some(l) = leads() {
            return Redirect::NotLeader(l);
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let env = match (Quarantine {
            index,
            name: name.clone(),
        })
        .envelope(time_ms)
        {
            Ok(e) => e,
            Err(e) => return Redirect::Failed(e.to_string()),
        };
        tracing::error!(
            index,
            message = %name,
            "every member stopped before log entry {index} (`{name}`) after it crashed them: \
             quarantining it (it is applied as `Poisoned` on every replica)"
        );
        // not `client_write`: that waits for apply, which waits for this
        if let Err(e) = raft.client_write_ff(env, None).await {
            return Redirect::Unknown(format!("leader stopped: {e}"));
        }
    }
    let mut committed = sm.shared.log.watch_committed();
    let decided = tokio::time::timeout(COMMIT_TIMEOUT, async {
        loop {
            if sm.shared.log.decision_for(index).is_some() {
                return true;
            }
            if committed.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match decided {
        Ok(true) => Redirect::Ok(()),
        _ => Redirect::Unknown(format!(
            "the decision to quarantine log entry {index} did not commit in time"
        )),
    }
}

/// Every [`POLL`] while this node stalls before an entry: asks the members
/// (see the module's head), hands leadership to one that applied it, and,
/// in automatic mode on the leader, quarantines it once every member
/// promised.
pub(crate) async fn watch(id: u64, raft: Raft, sm: SmStore, pool: Pool, mode: Mode) {
    sm.shared.poison.set_pool(pool);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(stop) = sm.shared.poison.stop() else {
            continue;
        };
        let leads = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            m.current_leader == Some(id) && m.state == openraft::ServerState::Leader
        };
        let round = ask(id, &raft, &sm, stop.index, false).await;
        let ran = round.ran(stop.index);
        if !ran.is_empty() {
            sm.shared
                .poison
                .applied_elsewhere(&sm.shared.marker, stop.index, ran.clone());
            if leads && let Some(to) = ran.first() {
                tracing::warn!(
                    to,
                    "this node stops before log entry {}: handing leadership to node {to}, \
                     which applied it",
                    stop.index
                );
                let _ = raft.trigger().transfer_leader(*to).await;
            }
            continue;
        }
        if !leads || mode != Mode::Automatic {
            continue;
        }
        match propose(id, &raft, &sm, stop.index).await {
            Redirect::Ok(()) => refused = None,
            Redirect::Unknown(why) | Redirect::Failed(why) => {
                if refused.as_deref() != Some(why.as_str()) {
                    tracing::warn!(
                        index = stop.index,
                        "log entry {} (`{}`) is not quarantined yet: {why}",
                        stop.index,
                        stop.name
                    );
                    refused = Some(why);
                }
            }
            Redirect::NotLeader(_) | Redirect::NotUpgraded { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev(died: u32, exe: u64, stalled: bool, promised: bool) -> InProgress {
        InProgress {
            index: 7,
            name: "shop.Boom".into(),
            died,
            exe,
            stalled,
            promised,
        }
    }

    #[test]
    fn a_node_that_died_once_in_an_entry_runs_it_again() {
        assert_eq!(
            start_rule(&prev(0, 5, false, false), 5),
            Start::Retry { died: 1 }
        );
        // an older record (no program id) counts the same
        assert_eq!(
            start_rule(&prev(0, 0, false, false), 5),
            Start::Retry { died: 1 }
        );
    }

    #[test]
    fn a_node_that_died_twice_in_an_entry_stops_before_it() {
        assert_eq!(
            start_rule(&prev(1, 5, false, false), 5),
            Start::Stall {
                died: 2,
                promised: false
            }
        );
        assert_eq!(
            start_rule(&prev(4, 5, false, false), 5),
            Start::Stall {
                died: 5,
                promised: false
            }
        );
    }

    #[test]
    fn a_new_program_gets_one_more_try_unless_the_node_promised() {
        assert_eq!(
            start_rule(&prev(1, 5, false, false), 6),
            Start::Retry { died: 2 }
        );
        assert_eq!(
            start_rule(&prev(2, 5, true, false), 6),
            Start::Retry { died: 2 }
        );
        assert_eq!(
            start_rule(&prev(2, 5, true, true), 6),
            Start::Stall {
                died: 2,
                promised: true
            }
        );
    }

    #[test]
    fn a_node_restarted_while_stalled_tries_once_more_unless_it_promised() {
        assert_eq!(
            start_rule(&prev(2, 5, true, false), 5),
            Start::Retry { died: 2 }
        );
        assert_eq!(
            start_rule(&prev(2, 5, true, true), 5),
            Start::Stall {
                died: 2,
                promised: true
            }
        );
    }

    fn report(applied: u64, stalled: Option<u64>, promised: bool) -> Result<Report, String> {
        Ok(Report {
            applied,
            stalled: stalled.map(|i| (i, "shop.Boom".to_string())),
            promised,
            quarantined: false,
        })
    }

    fn round(reports: Vec<(u64, Result<Report, String>)>) -> Round {
        Round {
            members: (1..=3).map(|i| (i, String::new())).collect(),
            reports: reports.into_iter().collect(),
        }
    }

    #[test]
    fn an_entry_is_quarantined_only_when_every_member_promised_and_none_applied_it() {
        let all = round(vec![
            (1, report(6, Some(7), true)),
            (2, report(6, Some(7), true)),
            (3, report(6, Some(7), true)),
        ]);
        assert_eq!(all.refusal(7, "shop.Boom"), None);
        assert!(all.ran(7).is_empty());

        let one_ran = round(vec![
            (1, report(6, Some(7), true)),
            (2, report(9, None, false)),
            (3, report(6, Some(7), true)),
        ]);
        assert!(one_ran.refusal(7, "shop.Boom").is_some());
        assert_eq!(one_ran.ran(7), vec![2]);

        let one_silent = round(vec![
            (1, report(6, Some(7), true)),
            (3, report(6, Some(7), true)),
        ]);
        assert!(one_silent.refusal(7, "shop.Boom").is_some());

        let one_behind = round(vec![
            (1, report(6, Some(7), true)),
            (2, report(3, None, false)),
            (3, report(6, Some(7), true)),
        ]);
        assert!(one_behind.refusal(7, "shop.Boom").is_some());
        assert!(one_behind.ran(7).is_empty());

        let unpromised = round(vec![
            (1, report(6, Some(7), true)),
            (2, report(6, Some(7), false)),
            (3, report(6, Some(7), true)),
        ]);
        assert!(unpromised.refusal(7, "shop.Boom").is_some());

        // a member that applied it as quarantined did not run it
        let mut q = report(9, None, false).unwrap();
        q.quarantined = true;
        let decided = round(vec![
            (1, report(6, Some(7), true)),
            (2, Ok(q)),
            (3, report(6, Some(7), true)),
        ]);
        assert!(decided.ran(7).is_empty());
    }
}
