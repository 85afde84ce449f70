//! openraft glue: the type configuration, the durable log, the state
//! machine adapter and the network adapter. No openraft type leaves this
//! module: the rest of catga sees [`RaftHandle`] and plain values.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::{Applied, Envelope};

mod forward;
mod handle;
mod log_store;
mod network;
#[cfg(test)]
mod proptests;
mod state_machine;
mod wal;

pub(crate) use handle::{RaftHandle, RaftSettings};

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
);

pub(crate) type Entry = <TC as openraft::RaftTypeConfig>::Entry;
pub(crate) type LogId = openraft::alias::LogIdOf<TC>;
pub(crate) type Vote = openraft::alias::VoteOf<TC>;
pub(crate) type Raft = openraft::Raft<TC, state_machine::SmStore>;

/// A request from one node to another.
#[derive(Serialize, Deserialize)]
pub(crate) enum Rpc {
    Append(openraft::raft::AppendEntriesRequest<TC>),
    Vote(openraft::raft::VoteRequest<TC>),
    Snapshot {
        vote: Vote,
        meta: openraft::alias::SnapshotMetaOf<TC>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A client write forwarded by a follower.
    Write(Envelope),
    /// Client writes forwarded by a follower in one batch; answered in order.
    WriteMany(Vec<Envelope>),
    /// A follower asks the leader for a read index (linearizable reads).
    ReadIndex,
    /// Membership changes forwarded to the leader.
    AddNode {
        id: u64,
        addr: String,
    },
    RemoveNode {
        id: u64,
    },
}

/// The answer to [`Rpc::Write`], [`Rpc::ReadIndex`] and membership RPCs.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Redirect<T> {
    Ok(T),
    /// Not the leader (or not yet able to serve): try this one.
    NotLeader(Option<u64>),
    /// The outcome is unknown (the entry may or may not commit): retry.
    Unknown(String),
    /// Refused for good.
    Failed(String),
}
