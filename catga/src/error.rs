//! The error types: [`Error`] for every call of the API, [`ApplyError`]
//! for why a replicated entry produced no output (the same on every replica).

/// The result type of catga's API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why applying a replicated entry produced no output. The same on every
/// replica, so it is part of the replicated response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// No handler on this node knows the wire name (a node running older code?).
    #[error("no handler is registered for `{name}`; is every node running the same version?")]
    UnknownMessage {
        /// The wire name.
        name: String,
    },
    /// The payload did not decode as the message type.
    #[error("could not decode `{what}`: {reason}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's message.
        reason: String,
    },
    /// A value did not encode.
    #[error("could not encode `{what}`: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// The handler panicked. Changes it made to the state before panicking stay
    /// (they are the same on every replica); its events are dropped.
    #[error("handler `{handler}` panicked: {message}")]
    Panicked {
        /// The handler's path.
        handler: String,
        /// The panic message.
        message: String,
    },
    /// The command's handler killed the process (an abort, a stack overflow,
    /// a failed allocation) on every replica that ran it, twice each, so the
    /// cluster quarantined its log entry: it was applied as this failure on
    /// every replica, and its handler changed nothing anywhere. The same
    /// answer is kept for a retry of the same request or idempotency key.
    /// Sending the command again (a new request) runs the handler again:
    /// fix the handler first (see "Poison pills" in the operations guide).
    #[error(
        "`{name}` (log entry {index}) crashed every replica that applied it and was quarantined: \
         it changed nothing; fix its handler before sending it again"
    )]
    Poisoned {
        /// The log index of the quarantined entry.
        index: u64,
        /// The command's wire name.
        name: String,
    },
    /// The client already acknowledged this sequence number, so its response
    /// is gone; the request was not applied again.
    #[error("request {seq} of client {client} was already acknowledged; it was not applied again")]
    Stale {
        /// The client id.
        client: u64,
        /// The sequence number.
        seq: u64,
    },
}

/// Everything that can go wrong in catga's API. A handler's own error is not
/// here: it is the handler's return value, returned inside `Ok`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The annotated items linked into this program are inconsistent (two
    /// messages or states with one wire name, a handler for an unknown
    /// message). Found when the first node or test app starts.
    #[error("the annotated items are inconsistent: {0}")]
    Registry(String),
    /// A message was used as the wrong kind (a command run as a query).
    #[error("`{name}` {advice}")]
    WrongKind {
        /// The message's wire name.
        name: &'static str,
        /// What it is, and what to call instead.
        advice: &'static str,
    },
    /// Applying the command failed (see [`ApplyError`]).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A state type that a query reads is not in the registry.
    #[error("state `{0}` is not registered: no #[handler] or #[state] names it")]
    UnknownState(&'static str),
    /// A snapshot could not be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A setting is invalid.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The builder method / setting name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The request did not complete before its deadline. For a command the
    /// outcome is unknown: it may still be applied (once).
    #[error("gave up after {waited:?} ({reason}); is a majority of the cluster up and reachable?")]
    Timeout {
        /// How long the call tried.
        waited: std::time::Duration,
        /// The last reason it could not complete.
        reason: String,
    },
    /// The node is shutting down or has shut down.
    #[error("the node is shut down")]
    ShutDown,
    /// Too many requests in flight from this node handle: none finished
    /// within the request timeout. Nothing was sent; retry later.
    #[error(
        "too many requests in flight on this node (see `max_in_flight`); nothing was sent, retry later"
    )]
    Overloaded,
    /// Reading or writing the data dir (or binding a socket) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which path or address.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Raft core refused to start or stopped (its log or state machine
    /// failed). The node cannot serve writes until it is restarted.
    #[error("raft: {0}")]
    Raft(String),
    /// A membership change was refused by the leader.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The leader refused to propose a message that some members cannot
    /// apply (they run an older version). Nothing was written.
    #[error(
        "`{name}` is not known to node(s) {nodes:?} of the cluster: finish the rolling upgrade \
         (every node running a version with its handler) before sending it; nothing was written"
    )]
    NotUpgraded {
        /// The message's wire name.
        name: String,
        /// The members that do not know it.
        nodes: Vec<u64>,
    },
    /// The discovery store failed or refused (unreachable at start, a
    /// duplicate node id, a bad setting).
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// This node does not belong to the cluster it was started in: its data
    /// dir is of another cluster, was wiped or replaced, or its id was
    /// removed. The message says what to do. Nothing was merged.
    #[error("refused by the cluster: {0}")]
    ClusterMismatch(String),
    /// A poisoned log entry was not quarantined
    /// ([`Node::skip_poisoned`](crate::Node::skip_poisoned)): not every
    /// member stops before it, one applied it, or one did not answer. The
    /// message names them. Nothing was written.
    #[error("quarantine refused: {0}")]
    Quarantine(String),
    /// The node a query was sent to ([`Node::send_to`](crate::Node::send_to))
    /// is not a member, has left, or could not be reached (or died) before
    /// it answered. The call was not sent to another node; a query changes
    /// no state, so sending it again (there or elsewhere) is safe.
    #[error("node {node} is unavailable: {reason}; pick another from `members()`")]
    NodeUnavailable {
        /// The node asked.
        node: u64,
        /// Why it could not answer.
        reason: String,
    },
}

/// Whether a command that failed with an [`Error`] was applied: see
/// [`Error::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The command was definitely not applied and never will be from this
    /// call: nothing reached the log, or the log entry changed nothing.
    /// Sending it again is a new command.
    NotApplied,
    /// The command may have been applied, or may still be (once): the call
    /// gave up without an answer, or it was applied and the error came
    /// after. Retrying with [`Node::send`](crate::Node::send) may apply it
    /// twice; retry with [`Node::send_keyed`](crate::Node::send_keyed)
    /// and the same key instead, or read the state to find out.
    Unknown,
}

impl Error {
    /// Whether the command of the call that returned this error was applied.
    ///
    /// | error | outcome |
    /// |---|---|
    /// | `Registry`, `WrongKind`, `UnknownState`, `Config`, `Snapshot`, `Overloaded`, `Membership` (refused by the leader), `NotUpgraded` (refused before proposing) | `NotApplied` |
    /// | `Quarantine` (nothing was written) | `NotApplied` |
    /// | `NodeUnavailable` (only queries and broadcasts cross nodes this way: nothing reaches the log) | `NotApplied` |
    /// | `Apply(UnknownMessage)` (no handler on the replicas) | `NotApplied` |
    /// | `Apply(Poisoned)` (quarantined: its handler never completed anywhere) | `NotApplied` |
    /// | `Timeout`, `ShutDown`, `Io`, `Raft` (no answer: it may be in the log) | `Unknown` |
    /// | `Apply(Panicked)` (its changes before the panic stay), `Apply(Stale)` (an earlier send of it may have applied), `Apply(Decode / Encode)` | `Unknown` |
    ///
    /// For a query or a publish the same table holds (a query changes
    /// nothing either way).
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Registry(_)
            | Error::WrongKind { .. }
            | Error::UnknownState(_)
            | Error::Config { .. }
            | Error::Snapshot(_)
            | Error::Overloaded
            | Error::Membership(_)
            | Error::NotUpgraded { .. }
            | Error::Discovery(_)
            | Error::ClusterMismatch(_)
            | Error::NodeUnavailable { .. }
            | Error::Quarantine(_)
            | Error::Apply(ApplyError::UnknownMessage { .. })
            | Error::Apply(ApplyError::Poisoned { .. }) => Outcome::NotApplied,
            Error::Timeout { .. }
            | Error::ShutDown
            | Error::Io { .. }
            | Error::Raft(_)
            | Error::Apply(_) => Outcome::Unknown,
        }
    }

    /// An [`Error::Io`] with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
