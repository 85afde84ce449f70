//! The error types: [`Error`] for every call of the API, [`ApplyError`]
//! for why a replicated entry produced no output (the same on every replica),
//! [`TimeoutReason`] for what a call that gave up was waiting for.
//!
//! Behaviour is decided on these types, never on their messages: a message
//! is for a person, and says what to do.

pub(crate) mod discovery;

pub use self::discovery::DiscoveryError;

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
    /// outcome is unknown: it may still be applied (once). The reason says
    /// what the call was waiting for, and what to do.
    #[error("gave up after {waited:?}: {reason}")]
    Timeout {
        /// How long the call tried.
        waited: std::time::Duration,
        /// What it was waiting for when it gave up.
        reason: TimeoutReason,
    },
    /// The node is shutting down or has shut down.
    #[error("the node is shut down: this handle serves nothing more; start the node again")]
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
    /// The leader refused the membership change: the cluster's membership
    /// forbids it now (another change is in progress, the node is the last
    /// voter, the new node made no progress catching up). Nothing changed.
    #[error("the leader refused the membership change: {0}")]
    Membership(String),
    /// This node did not try the call: something it needs first is missing
    /// for now (the discovery store a removal must be recorded in has been
    /// unreachable since it started). Nothing was sent or changed; the
    /// message says what to wait for, then call again.
    #[error("not now: {0}")]
    NotNow(String),
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
    Discovery(#[from] DiscoveryError),
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
    /// A request does not fit in one transport frame (`max_frame_bytes`):
    /// nothing was sent.
    #[error(
        "the {what} is {size} bytes, over the {max}-byte frame limit between nodes: nothing was \
         sent; send less in one message, or raise `max_frame_bytes` on every node"
    )]
    TooLarge {
        /// What did not fit (a query, a broadcast event).
        what: &'static str,
        /// Its encoded size.
        size: usize,
        /// The largest body that fits in a frame.
        max: usize,
    },
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

/// What a call that gave up ([`Error::Timeout`]) was waiting for; its
/// message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutReason {
    /// No leader was known: an election is under way, or no majority of the
    /// voters is up and reachable.
    #[error(
        "no leader known; is a majority of the voters up and able to reach each other? \
         (`health()` on each node shows its leader and why it is not ready)"
    )]
    NoLeader,
    /// A leader was known but gave no answer in time (it may be overloaded,
    /// or cut off from a majority of the voters).
    #[error(
        "the leader gave no answer in time ({last}); is it overloaded or cut off from a majority \
         of the voters? Retry (a command with the same idempotency key, to apply it once)"
    )]
    Leader {
        /// The last reason an attempt did not complete.
        last: String,
    },
    /// This node did not apply the log up to `index` in time: it is behind
    /// the leader, or its apply loop is stalled.
    #[error(
        "this node did not apply log index {index} in time: it is behind the leader or its apply \
         loop is stalled (`health()`: lag, stalled, poisoned); retry, or read on another node"
    )]
    Applied {
        /// The index waited for.
        index: u64,
    },
    /// This node did not become ready.
    #[error("this node did not become ready ({why}); `health()` says what it waits for")]
    NotReady {
        /// Why it was not ready at the deadline.
        why: String,
    },
    /// Node `node` did not answer a request in time (it may be overloaded,
    /// paused or cut off). A query changes nothing: asking again is safe.
    #[error(
        "node {node} did not answer in time (overloaded, paused or cut off?); retry, or ask \
         another node from `members()`"
    )]
    NoAnswer {
        /// The node asked.
        node: u64,
    },
    /// No member answered a routed query in time.
    #[error(
        "no member answered `{name}` in time; check `members()` for live members that run its \
         handler, then retry"
    )]
    NoMember {
        /// The query's wire name.
        name: String,
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
    /// | `Registry`, `WrongKind`, `UnknownState`, `Config`, `Snapshot`, `Overloaded`, `Membership` (refused by the leader), `NotNow` (not tried), `NotUpgraded` (refused before proposing), `TooLarge` (not sent) | `NotApplied` |
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
            | Error::NotNow(_)
            | Error::TooLarge { .. }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timeout(reason: TimeoutReason) -> String {
        Error::Timeout {
            waited: Duration::from_secs(2),
            reason,
        }
        .to_string()
    }

    #[test]
    fn a_timeout_says_what_it_waited_for_and_what_to_do_per_call() {
        let no_leader = timeout(TimeoutReason::NoLeader);
        assert!(no_leader.contains("majority of the voters"), "{no_leader}");
        // a node asked directly, or this node's own apply loop, is not a
        // question of the majority
        for (t, says) in [
            (timeout(TimeoutReason::NoAnswer { node: 4 }), "another node"),
            (
                timeout(TimeoutReason::Applied { index: 9 }),
                "read on another node",
            ),
            (
                timeout(TimeoutReason::NoMember { name: "Get".into() }),
                "members()",
            ),
            (
                timeout(TimeoutReason::NotReady { why: "x".into() }),
                "health()",
            ),
        ] {
            assert!(!t.contains("majority"), "{t}");
            assert!(t.contains(says), "{t}");
        }
        let slow = timeout(TimeoutReason::Leader { last: "x".into() });
        assert!(slow.contains("same idempotency key"), "{slow}");
    }

    #[test]
    fn a_request_too_large_is_no_encoding_failure_and_was_not_sent() {
        let e = Error::TooLarge {
            what: "request",
            size: 100,
            max: 10,
        };
        assert_eq!(e.outcome(), Outcome::NotApplied);
        assert!(e.to_string().contains("max_frame_bytes"), "{e}");
        assert!(!matches!(e, Error::Apply(_)));
    }

    #[test]
    fn a_leaders_refusal_and_a_local_precondition_are_told_apart() {
        let refused = Error::Membership("another change is in progress".into());
        let not_now = Error::NotNow("the store is down; retry once it is back".into());
        assert!(refused.to_string().contains("the leader refused"));
        assert!(!not_now.to_string().contains("leader"));
        assert_eq!(refused.outcome(), Outcome::NotApplied);
        assert_eq!(not_now.outcome(), Outcome::NotApplied);
    }
}
