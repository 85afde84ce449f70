//! What `ready` means, computed from openraft's metrics, what this node
//! last heard from a leader ([`LeaderContact`]) and the event log:
//!
//! - a voting member;
//! - a live leader: this node, acknowledged by a quorum within one election
//!   timeout, openraft's leader lease (a lone voter is its own quorum; a
//!   leader past it has lost its quorum, takes no writes, and names no
//!   leader in its status), or a leader of the current
//!   term this node heard from within two election timeouts (a restarted
//!   node names nobody until a leader speaks to it);
//! - applied within `ready_max_lag` entries of that leader's commit index;
//! - apply not stuck (committed entries waiting and the applied index not
//!   moving for [`APPLY_STUCK_AFTER`]);
//! - no event handler running past the slow threshold.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::contact::LeaderContact;
use super::events::EventLog;
use super::{Raft, RaftState, Status};

/// Apply that has not moved for this long while committed entries wait is
/// reported as stuck.
const APPLY_STUCK_AFTER: Duration = Duration::from_secs(5);

/// The state readiness needs between two calls.
pub(crate) struct Readiness {
    contact: Arc<LeaderContact>,
    ready_max_lag: u64,
    /// How long a leader's silence is tolerated before `ready` turns false.
    contact_window: Duration,
    /// How long a leader may go without a quorum's acknowledgement before
    /// it reports it lost its quorum: openraft's leader lease (half the
    /// election timeout's maximum, see `handle::start::openraft_election`), after
    /// which it refuses writes.
    lease: Duration,
    /// The applied index last seen by `status`, and since when.
    apply_progress: Mutex<(Option<u64>, Instant)>,
}

impl Readiness {
    pub(crate) fn new(
        contact: Arc<LeaderContact>,
        ready_max_lag: u64,
        contact_window: Duration,
        lease: Duration,
    ) -> Readiness {
        Readiness {
            contact,
            ready_max_lag,
            contact_window,
            lease,
            apply_progress: Mutex::new((None, Instant::now())),
        }
    }

    /// This node's view of the cluster, read from openraft's metrics.
    /// `applied_here`: the highest index this node's state machine has
    /// applied, which openraft's metrics report only once the whole batch
    /// has returned, after its callers were answered: a caller whose write
    /// returned must see it counted.
    pub(crate) fn status(
        &self,
        id: u64,
        raft: &Raft,
        events: &EventLog,
        stalled: Option<String>,
        applied_here: u64,
    ) -> Status {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let state = RaftState::from(m.state);
        let membership = m.membership_config.membership();
        let members: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let last_log = m.last_log_index;
        let applied = m
            .last_applied
            .map(|l| l.index)
            .max((applied_here > 0).then_some(applied_here));
        let replication_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(peer, _)| **peer != id)
                    .map(|(peer, matched)| {
                        let matched = matched.map(|l| l.index + 1).unwrap_or(0);
                        (
                            *peer,
                            last_log.map(|l| l + 1).unwrap_or(0).saturating_sub(matched),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let committed = m.local_committed.map(|l| l.index);
        let term = m.current_term;
        let events = events.status();

        // The leader's commit index: our own when we lead; otherwise what
        // the leader we follow sent in this term (nothing after a restart
        // until a leader has spoken to this process).
        let heard = self
            .contact
            .last()
            .filter(|h| h.term == term && Some(h.leader) == m.current_leader);
        let leader_commit = match state {
            RaftState::Leader => committed,
            _ => heard.and_then(|h| h.commit),
        };
        let applied_stuck_for = {
            let mut p = self.apply_progress.lock();
            if p.0 != applied {
                *p = (applied, Instant::now());
            }
            (applied < committed).then(|| p.1.elapsed())
        };
        // Is the leader this node names alive, as far as it can tell?
        let acked_ago = m.last_quorum_acked.as_ref().map(|t| {
            use openraft::Instant as _;
            t.elapsed()
        });
        // a leader cut off from a majority for longer than its lease: it
        // acknowledges nothing (openraft refuses new writes), and says so
        // rather than claim to lead; the only voter is its own quorum
        // (openraft refreshes the acknowledgement only when followers
        // answer, so a single node's would look stale)
        let quorum_lost = state == RaftState::Leader
            && members != [id]
            && acked_ago.is_some_and(|t| t > self.lease);
        let unconfirmed = match state {
            RaftState::Leader if members == [id] => None,
            RaftState::Leader => match acked_ago {
                None => Some(format!(
                    "leader of term {term}, not yet acknowledged by a quorum"
                )),
                Some(t) if quorum_lost => Some(format!(
                    "lost its quorum: leader of term {term}, but no majority of the voters \
                     has answered it for {t:?} (more than an election timeout); it takes no \
                     writes until a majority answers or another leader is elected"
                )),
                Some(_) => None,
            },
            RaftState::Follower | RaftState::Learner => match heard {
                None => Some(format!("has not heard from a leader in term {term}")),
                Some(h) if h.at.elapsed() > self.contact_window => Some(format!(
                    "no word from leader {} for {:?}",
                    h.leader,
                    h.at.elapsed()
                )),
                Some(_) => None,
            },
            other => Some(format!("{other:?}")),
        };
        let leader_confirmed = m.running_state.is_ok() && unconfirmed.is_none();
        let failed = match &m.running_state {
            Ok(()) | Err(openraft::errors::Fatal::Stopped) => None,
            Err(e) => Some(e.to_string()),
        };
        let not_ready = if let Some(e) = &failed {
            Some(format!("failed: {e}; restart this node"))
        } else if let Err(e) = &m.running_state {
            Some(format!("raft stopped: {e}"))
        } else if let Some(s) = &stalled {
            Some(format!("stalled: {s}"))
        } else if !members.contains(&id) {
            Some("not a voting member".to_string())
        } else {
            unconfirmed
        }
        .or_else(|| {
            let (a, c) = (applied.unwrap_or(0), leader_commit.unwrap_or(0));
            (a.saturating_add(self.ready_max_lag) < c)
                .then(|| format!("{} entries behind the leader's commit index {c}", c - a))
        })
        .or_else(|| {
            applied_stuck_for
                .filter(|t| *t > APPLY_STUCK_AFTER)
                .map(|t| format!("apply has not moved for {t:?} at index {applied:?}"))
        })
        .or_else(|| events.stuck.clone());
        let ready = not_ready.is_none();
        Status {
            node_id: id,
            state,
            term: m.current_term,
            leader: m.current_leader.filter(|_| !quorum_lost),
            quorum_lost,
            leader_confirmed,
            members,
            learners,
            last_log_index: last_log,
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            replication_lag,
            leader_commit,
            events_delivered: events.delivered,
            event_lag: events.pending,
            ready,
            not_ready,
            stalled,
            failed,
            poisoned: None,
        }
    }
}
