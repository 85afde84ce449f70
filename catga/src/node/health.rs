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
    /// The last log index purged from this node's log (the log starts after
    /// it): a node behind it can only catch up from a snapshot.
    pub purged_index: Option<u64>,
    /// On the leader: for each other member, how many entries it is behind.
    pub replication_lag: BTreeMap<u64, u64>,
    /// The commit index of the leader this node follows (its own on the
    /// leader), as last heard from it in the current term; `None` until a
    /// leader has spoken to this process. Wait until `applied_index`
    /// reaches it to know this node has caught up.
    pub leader_commit_index: Option<u64>,
    /// The highest log index whose events ran on this node's event handlers.
    pub events_delivered_index: u64,
    /// Applied entries whose events still wait for this node's handlers.
    pub event_lag: u64,
    /// Ready to serve: a voting member; a leader acknowledged by a quorum,
    /// or a follower that heard from the leader of the current term within
    /// two election timeouts; applied within
    /// [`ready_max_lag`](crate::ClusterBuilder::ready_max_lag) of the
    /// leader's commit index; apply not stuck or stalled; no event handler past
    /// [`slow_event_handler`](crate::ClusterBuilder::slow_event_handler).
    pub ready: bool,
    /// Why `ready` is false (`None` when ready).
    pub not_ready: Option<String>,
    /// Why this node cannot keep up, if it cannot: an entry in its log that
    /// its program has no handler for, or a snapshot from the leader with a
    /// state it does not know (it runs an older version than the leader).
    /// Restart it with the version the others run.
    pub stalled: Option<String>,
    /// Why this node stopped for good, if it did: its storage failed (a
    /// full disk, a disk error) and its Raft stopped. It answers no reads or
    /// writes any more; restart it (see [`crate::Node::stopped`]).
    pub failed: Option<String>,
    /// Why this node is not registered with its discovery store, if it is
    /// not: a member (it has Raft state) started with `.discovery(..)`
    /// while its store was unreachable. It serves; it runs its store checks
    /// and registers once the store is back (see "Restarts while the store
    /// is down" in the README).
    #[serde(default)]
    pub unregistered: Option<String>,
    /// Why this node is no replica, if its peers refuse it: its data dir
    /// was wiped or replaced, it belongs to another cluster, or it was
    /// removed (the refusing peer's reason and what to do). It answers no
    /// queries and takes no writes (both fail at once with
    /// [`Error::ClusterMismatch`](crate::Error::ClusterMismatch)), and is
    /// not ready. A node that hears from a leader is never refused.
    #[serde(default)]
    pub refused: Option<String>,
    /// This node is the leader of its term, but no majority of the voters
    /// has answered it for longer than an election timeout (its link to
    /// them is cut, or they are down): it takes no writes, names no leader
    /// (`leader` is `None` while `role` stays openraft's `Leader`) and is
    /// not ready. A majority that can reach each other elects another
    /// leader meanwhile; when the links heal this node learns of it and
    /// follows.
    #[serde(default)]
    pub lost_quorum: bool,
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
            purged_index: s.purged_index,
            replication_lag: s.replication_lag,
            leader_commit_index: s.leader_commit,
            events_delivered_index: s.events_delivered,
            event_lag: s.event_lag,
            ready: s.ready,
            not_ready: s.not_ready,
            stalled: s.stalled,
            failed: s.failed,
            unregistered: None,
            refused: None,
            lost_quorum: s.quorum_lost,
        }
    }
}
