//! [`Health`]: a node's view of the cluster, for health checks and dashboards.

use std::collections::BTreeMap;

use crate::raft::{RaftState, Status};

/// The Raft role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// Replicates from the leader; forwards writes to it.
    Follower,
    /// Campaigning for leadership.
    Candidate,
    /// Receives the log but does not vote (joining, or not a member).
    Learner,
    /// Shut down.
    Shutdown,
}

/// What [`crate::Node::health`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// This node's id.
    pub node_id: u64,
    /// Its role.
    pub role: Role,
    /// The current Raft term.
    pub term: u64,
    /// The leader this node follows, if known.
    pub leader: Option<u64>,
    /// The voting members.
    pub members: Vec<u64>,
    /// The non-voting members.
    pub learners: Vec<u64>,
    /// The index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// The index of the last entry applied to the state here.
    pub applied_index: Option<u64>,
    /// The last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// On the leader: for each other member, how many entries it is behind.
    pub replication_lag: BTreeMap<u64, u64>,
    /// Running, a leader known, everything committed here is applied, and
    /// not stalled.
    pub ready: bool,
    /// Why this node cannot keep up, if it cannot: an entry in its log that
    /// its program has no handler for, or a snapshot from the leader with a
    /// state it does not know (it runs an older version than the leader).
    /// Restart it with the version the others run.
    pub stalled: Option<String>,
}

impl From<Status> for Health {
    fn from(s: Status) -> Health {
        Health {
            node_id: s.node_id,
            role: match s.state {
                RaftState::Leader => Role::Leader,
                RaftState::Follower => Role::Follower,
                RaftState::Candidate => Role::Candidate,
                RaftState::Learner => Role::Learner,
                RaftState::Shutdown => Role::Shutdown,
            },
            term: s.term,
            leader: s.leader,
            members: s.members,
            learners: s.learners,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            replication_lag: s.replication_lag,
            ready: s.ready,
            stalled: s.stalled,
        }
    }
}
