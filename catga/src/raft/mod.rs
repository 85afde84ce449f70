//! openraft glue: the type configuration, the durable log, the state
//! machine adapter, the network adapter and the RPC service. No openraft
//! type leaves this module: the rest of catga sees [`RaftHandle`],
//! [`Status`] and plain values.
//!
//! Inside, the arrows run: `handle` (the client side) → `forward`,
//! `leader`, `network`, `service` → `wire`; `service` → `leader`,
//! `contact`; `status` (readiness) → `contact`, `events`; the storage pair
//! `log_store` → `wal` and `state_machine` → `events` know nothing of the
//! network. `quiet` is openraft's runtime (rate-limited logs, timeouts
//! no shorter than the slowest link).

use std::collections::BTreeMap;
use std::fmt;

use crate::machine::{Applied, Envelope};

mod applier;
mod compat;
mod contact;
mod events;
mod forward;
mod handle;
mod identity;
mod leader;
mod log_store;
mod network;
mod pipe;
mod poison;
#[cfg(test)]
mod proptests;
mod quiet;
mod service;
mod snapshot_file;
mod stack;
mod stall;
mod state_machine;
mod status;
mod voters;
mod wal;
pub(crate) mod wire;

pub(crate) use events::DeliverySettings;
pub(crate) use handle::{MembershipView, RaftHandle, RaftSettings};
pub(crate) use poison::{Mode as QuarantineMode, Stop as PoisonStop};

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}:{}", self.name, self.client, self.seq)
    }
}

openraft::declare_raft_types!(
    /// catga's Raft type configuration.
    pub TC:
        D = Envelope,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = quiet::QuietRuntime,
);

pub(crate) type Entry = <TC as openraft::RaftTypeConfig>::Entry;
pub(crate) type LogId = openraft::alias::LogIdOf<TC>;
pub(crate) type Vote = openraft::alias::VoteOf<TC>;
pub(crate) type Raft = openraft::Raft<TC, state_machine::SmStore>;

/// This node's view of the cluster, from openraft's metrics, in plain values
/// (the node module turns it into the public `Health`).
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) node_id: u64,
    pub(crate) state: RaftState,
    pub(crate) term: u64,
    pub(crate) leader: Option<u64>,
    /// This node leads, but no majority acknowledged it within an election
    /// timeout (`leader` is then `None`).
    pub(crate) quorum_lost: bool,
    /// The leader is this node, acknowledged by a quorum lately, or one
    /// this node heard from in the current term lately.
    pub(crate) leader_confirmed: bool,
    pub(crate) members: Vec<u64>,
    pub(crate) learners: Vec<u64>,
    pub(crate) last_log_index: Option<u64>,
    pub(crate) applied_index: Option<u64>,
    pub(crate) snapshot_index: Option<u64>,
    pub(crate) purged_index: Option<u64>,
    pub(crate) replication_lag: BTreeMap<u64, u64>,
    /// The commit index of the leader this node follows (its own when it
    /// leads), as last heard in the current term.
    pub(crate) leader_commit: Option<u64>,
    /// Highest index whose events ran on this node.
    pub(crate) events_delivered: u64,
    /// Applied entries whose events wait for this node's handlers.
    pub(crate) event_lag: u64,
    pub(crate) ready: bool,
    /// Why `ready` is false.
    pub(crate) not_ready: Option<String>,
    /// Why this node cannot apply the log or restore the leader's snapshot.
    pub(crate) stalled: Option<String>,
    /// Why this node's Raft stopped for good (storage failed), if it did.
    pub(crate) failed: Option<String>,
    /// The entry this node stops before because it crashed in it
    /// (`raft/poison.rs`).
    pub(crate) poisoned: Option<PoisonStop>,
}

/// openraft's server state, without openraft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaftState {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl From<openraft::ServerState> for RaftState {
    fn from(s: openraft::ServerState) -> Self {
        match s {
            openraft::ServerState::Leader => RaftState::Leader,
            openraft::ServerState::Follower => RaftState::Follower,
            openraft::ServerState::Candidate => RaftState::Candidate,
            openraft::ServerState::Learner => RaftState::Learner,
            openraft::ServerState::Shutdown => RaftState::Shutdown,
        }
    }
}

/// What this node did, counted for metrics (`catga::http`'s `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Write attempts this node proposed itself, as the leader.
    pub(crate) writes_local: std::sync::atomic::AtomicU64,
    /// Write attempts forwarded to a leader elsewhere.
    pub(crate) writes_forwarded: std::sync::atomic::AtomicU64,
    /// Attempts of a call after its first (a leader change, a timeout).
    pub(crate) retries: std::sync::atomic::AtomicU64,
}

/// [`Counters`] read at one moment, plus the handler panics applied here.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) writes_local: u64,
    pub(crate) writes_forwarded: u64,
    pub(crate) retries: u64,
    pub(crate) handler_panics: u64,
}
