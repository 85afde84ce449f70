//! What this node last heard from a leader: the leader's term, id and
//! commit index, and when. Recorded by the RPC service for every
//! AppendEntries (heartbeats included) that this node accepted, so health
//! can tell a live leader from one remembered from before a restart, and
//! how far behind the leader's commit index this node is.

use parking_lot::Mutex;
use tokio::time::Instant;

/// One accepted AppendEntries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heard {
    pub(crate) term: u64,
    pub(crate) leader: u64,
    /// The leader's commit index as it sent it.
    pub(crate) commit: Option<u64>,
    pub(crate) at: Instant,
}

/// The last [`Heard`] of this process (nothing after a restart until a
/// leader speaks to it).
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    last: Mutex<Option<Heard>>,
}

impl LeaderContact {
    pub(crate) fn heard(&self, term: u64, leader: u64, commit: Option<u64>) {
        let mut last = self.last.lock();
        let commit = match *last {
            // requests may arrive out of order: keep the highest commit per term
            Some(h) if h.term == term && h.leader == leader => commit.max(h.commit),
            _ => commit,
        };
        *last = Some(Heard {
            term,
            leader,
            commit,
            at: Instant::now(),
        });
    }

    pub(crate) fn last(&self) -> Option<Heard> {
        *self.last.lock()
    }
}
