//! The message traits. `#[command]`, `#[query]` and `#[event]` implement
//! them; `#[handler]` implements [`Handled`]. Users rarely name these traits
//! except as bounds in their own generic helpers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApplyError;
use crate::state::StateInfo;

/// The three kinds of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MessageKind {
    /// A replicated write.
    Command,
    /// A read.
    Query,
    /// A notification delivered to every node.
    Event,
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageKind::Command => "command",
            MessageKind::Query => "query",
            MessageKind::Event => "event",
        })
    }
}

/// How fresh a query's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Answer from this node's state, with no network trip. On a follower
    /// the answer may lag the leader by the entries not yet applied here,
    /// but it includes every write that a `send` or `publish` through this
    /// node has returned `Ok` for (read your writes).
    #[default]
    Local,
    /// Answer only after this node has applied everything the leader had
    /// committed when the query arrived (a read index), so the answer
    /// reflects every write acknowledged before the query was sent.
    Linearizable,
}

/// A type annotated with `#[command]`, `#[query]` or `#[event]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a catga message",
    label = "not annotated with #[command], #[query] or #[event]",
    note = "annotate `{Self}` with `#[command]` (a replicated write), `#[query]` (a read) or `#[event]` (a notification)"
)]
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The stable wire name: `module::path::Type` unless set with `name = "..."`.
    const NAME: &'static str;
    /// Which kind of message this is.
    const KIND: MessageKind;
}

/// A replicated write: applied to the state on every node, in log order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[command]",
    label = "a handler that takes `&mut State` must handle a #[command]",
    note = "only a #[command] changes state: annotate `{Self}` with #[command] if it is a write; if it is a #[query], take the state as `&State`"
)]
pub trait Command: Message {}

/// A read, answered from the state.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[query]",
    label = "a handler that reads `&State` or returns a value must handle a #[query]",
    note = "annotate `{Self}` with #[query] if it is a read; a #[command] handler takes `&mut State`; an #[event] handler takes no state and returns nothing"
)]
pub trait Query: Message {
    /// The default consistency of this query (`#[query(linearizable)]` sets
    /// [`Consistency::Linearizable`]). A call may ask for more.
    const CONSISTENCY: Consistency = Consistency::Local;
    /// Which node answers [`Node::send`](crate::Node::send) and
    /// [`Node::query`](crate::Node::query) of this query, declared with
    /// `#[query(route = ...)]` (default: this node).
    const ROUTING: Routing<Self> = Routing::Local;
}

/// Which node answers a query, declared on its type with
/// `#[query(route = ...)]`: see "Across nodes" in the README.
pub enum Routing<M> {
    /// `route = local` (the default): this node, with no network trip.
    Local,
    /// `route = leader`: the current leader.
    Leader,
    /// `route = round_robin`: each live member in turn.
    RoundRobin,
    /// `route = least_loaded`: the better of two live members picked at
    /// random, by in-flight calls and a decaying average of latency.
    LeastLoaded,
    /// `route = key(field)`: the live member that rendezvous hashing picks
    /// for the field's value (the same on every caller).
    Key(fn(&M) -> u64),
}

impl<M> Clone for Routing<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Routing<M> {}

impl<M> std::fmt::Debug for Routing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Local => "local",
            Routing::Leader => "leader",
            Routing::RoundRobin => "round_robin",
            Routing::LeastLoaded => "least_loaded",
            Routing::Key(_) => "key",
        })
    }
}

impl<M> Routing<M> {
    /// Whether calls leave this node.
    pub const fn is_remote(&self) -> bool {
        !matches!(self, Routing::Local)
    }
}

/// A notification, delivered to the event handlers of every node.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an #[event]",
    label = "not an #[event]",
    note = "only an #[event] is published; a #[command] or #[query] is sent with `send`; to publish `{Self}` as a notification, annotate it with #[event]"
)]
pub trait Event: Message {}

/// A command or query that has a `#[handler]`: it can be sent, and
/// `Output` is what its handler returns.
///
/// Implemented by `#[handler]`. A second handler for the same message is a
/// compile error (conflicting implementations of `Handled`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent: `send` takes a #[command] or #[query] that has a #[handler]",
    label = "not a #[command] or #[query] with a #[handler]",
    note = "an #[event] is published with `publish`, not sent; otherwise annotate `{Self}` with #[command] or #[query] and write one `#[handler] fn` that takes it as its first parameter"
)]
pub trait Handled: Message {
    /// What the handler returns (for a command, decoded from the replicated response).
    type Output: Send + 'static;
    #[doc(hidden)]
    const ROUTE: Route<Self, Self::Output>;
}

/// A `#[query]` with a `#[handler]`: what `Node::query` takes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be queried: `query` takes a #[query] that has a #[handler]",
    label = "not a #[query] with a #[handler]",
    note = "a #[command] is replicated: send it with `send`; otherwise annotate `{Self}` with #[query] and write one `#[handler] fn` that takes it as its first parameter"
)]
pub trait Queryable: Handled {}
#[diagnostic::do_not_recommend]
impl<M: Query + Handled> Queryable for M {}

/// An `#[event]`: what `publish` takes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published: `publish` takes an #[event]",
    label = "not an #[event]",
    note = "a #[command] or #[query] is sent with `send`, not published; to publish `{Self}` as a notification, annotate it with #[event]"
)]
pub trait Publishable: Event {}
#[diagnostic::do_not_recommend]
impl<E: Event> Publishable for E {}

/// Boxed future used by generated code.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How a message reaches its handler; built by `#[handler]`.
#[doc(hidden)]
#[derive(Debug)]
pub enum Route<M, O> {
    /// Replicated: encode, propose, apply on every node, decode the output.
    Command {
        decode: fn(&[u8]) -> Result<O, ApplyError>,
    },
    /// Run against the local copy of a state.
    Query {
        consistency: Consistency,
        state: fn() -> StateInfo,
        run: fn(M, &(dyn std::any::Any + Send + Sync)) -> Option<O>,
        /// Where it runs, and how its answer comes back from another node.
        remote: Remote<M, O>,
    },
    /// Run without state.
    StatelessQuery {
        run: fn(M) -> BoxFuture<'static, O>,
        /// Where it runs, and how its answer comes back from another node.
        remote: Remote<M, O>,
    },
}

/// How a query's call leaves this node: its declared routing, and the
/// decoder of its answer (an error when the answer cannot be encoded: such
/// a query is `route = local`, checked at compile time, and `send_to`
/// requires an encodable answer).
#[doc(hidden)]
#[derive(Debug)]
pub struct Remote<M, O> {
    pub routing: Routing<M>,
    pub decode: fn(&[u8]) -> Result<O, ApplyError>,
}
