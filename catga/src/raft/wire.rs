//! What nodes say to each other on Raft's service: the request enum, the
//! leader's reply enum, and their encoding (through [`crate::codec`]).

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{TC, Vote};
use crate::codec;
use crate::machine::Envelope;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// openraft's log replication.
    Append(openraft::raft::AppendEntriesRequest<TC>),
    /// openraft's vote request.
    Vote(openraft::raft::VoteRequest<TC>),
    /// A whole snapshot in one frame, as versions before chunked snapshots
    /// sent it (still installed; no longer sent).
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: openraft::alias::SnapshotMetaOf<TC>,
        /// The state machine's snapshot bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A client write forwarded by a follower.
    Write(Envelope),
    /// Client writes forwarded by a follower in one batch; answered in order.
    WriteMany(Vec<Envelope>),
    /// A follower asks the leader for a read index (linearizable reads).
    ReadIndex,
    /// A membership change forwarded to the leader: add a node.
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its Raft address.
        addr: String,
    },
    /// A membership change forwarded to the leader: remove a node.
    RemoveNode {
        /// The node to remove.
        id: u64,
    },
    /// openraft's pre-vote: would the peer grant a vote at the next term?
    /// Answering changes nothing on the peer.
    PreVote(openraft::raft::VoteRequest<TC>),
    /// What does your program know? Answered with
    /// `Result<Capabilities, String>` (`raft/compat.rs`). New variants go
    /// last: an older node answers one it does not know with "bad request".
    Capabilities,
    /// A piece of a snapshot the leader sends to a lagging node, in order
    /// (`offset` is where it goes); answered with `Result<(), String>`.
    SnapshotChunk {
        /// The leader's vote.
        vote: Vote,
        /// Names this transfer; a new one replaces an unfinished one.
        transfer: u64,
        /// Where `data` goes in the snapshot's state stream.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The end of a chunked snapshot: check it and install it. Answered like
    /// [`Rpc::Snapshot`].
    SnapshotDone {
        /// The leader's vote.
        vote: Vote,
        /// The transfer whose chunks were sent.
        transfer: u64,
        /// The stream's length.
        len: u64,
        /// What the snapshot covers.
        meta: openraft::alias::SnapshotMetaOf<TC>,
    },
    /// openraft's log replication, pipelined: request `seq` of the leader's
    /// replication stream `lane` (`raft/pipe.rs`). Answered with
    /// `Result<StreamAppendResult, String>`, in `seq` order.
    AppendPipe {
        /// Names the leader's replication stream; a new one replaces it.
        lane: u64,
        /// The request's place in the lane, from 0.
        seq: u64,
        /// The request.
        req: openraft::raft::AppendEntriesRequest<TC>,
    },
    /// What did you do with log entry `index` (`raft/poison.rs`)? Answered
    /// with `Result<poison::Report, String>`. With `promise`, a node that
    /// stops before that entry promises never to run it on its own.
    PoisonReport {
        /// The entry asked about.
        index: u64,
        /// Ask for the promise.
        promise: bool,
    },
    /// To the leader: quarantine log entry `index` if every member stops
    /// before it and promises not to run it (an operator's skip;
    /// `raft/poison.rs`). Answered with `Redirect<()>` once the decision is
    /// committed.
    Quarantine {
        /// The entry.
        index: u64,
    },
}

/// The leader's answer to [`Rpc::Write`], [`Rpc::ReadIndex`] and the
/// membership RPCs.
#[derive(Serialize, Deserialize, Debug)]
pub enum Redirect<T> {
    /// Done.
    Ok(T),
    /// Not the leader (or not yet able to serve): try this one.
    NotLeader(Option<u64>),
    /// The outcome is unknown (the entry may or may not commit): retry.
    Unknown(String),
    /// Refused for good.
    Failed(String),
    /// Refused: the entry names a message that these members (possibly the
    /// leader itself) cannot apply; the rolling upgrade is not finished.
    NotUpgraded {
        /// The message's wire name.
        name: String,
        /// The members that do not know it.
        nodes: Vec<u64>,
    },
}

/// Encodes an RPC body or reply.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
    codec::encode(v).map(Bytes::from).map_err(|e| e.to_string())
}

/// Decodes an RPC body or reply (catga's own format: shallow nesting).
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    codec::decode(b, codec::INTERNAL_DEPTH).map_err(|e| e.to_string())
}
