//! What a `#[handler]` may take and return, decided by the TYPE of each
//! parameter (as axum decides extractors), and the compile-time checks the
//! generated code runs on a handler's signature.
//!
//! The traits users may meet in an error ([`CommandOutput`],
//! [`CommandParam`], [`QueryParam`], [`EventParam`], [`WireField`]) are also
//! re-exported, hidden, at the crate root, so rustc names them `CommandParam`
//! rather than by their path under `__private`.
//!
//! One mistake, one error: each trait bound on a user's type is required at
//! exactly one place, spanned on that type. Every other use of the type goes
//! through a probe ([`Param`], [`Field`], [`Probe`](super::Probe)) whose
//! inherent item exists only when the bound holds and which otherwise falls
//! back to a stand-in that type-checks and is never run (the crate does not
//! compile in that case).

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserializer, Serialize, Serializer};

use crate::context::{CommandContext, EventContext};
use crate::message::BoxFuture;
use crate::message::MessageKind;
use crate::state::{State, StateInfo};

/// What a command handler may return: it is encoded into the replicated
/// response and decoded by the caller, possibly on another node.
#[diagnostic::on_unimplemented(
    message = "a command handler must return a type that can be sent back to the caller: `{Self}` is not Serialize + Deserialize + Send",
    label = "the response is encoded on the replica and decoded by the caller, possibly on another node",
    note = "derive `Serialize` and `Deserialize` (from `catga::prelude`) with `#[serde(crate = \"catga::serde\")]` on every type in the return value, including the error type of a `Result`"
)]
pub trait CommandOutput {
    #[doc(hidden)]
    const ASSERT: () = ();
}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> CommandOutput for T {}

/// What a query's answer must be to cross nodes ([`Node::send_to`](crate::Node::send_to)).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent back from another node: a query's answer must be Serialize + Deserialize for `send_to`",
    label = "this query's answer is encoded on the node that runs it and decoded here",
    note = "derive `Serialize` and `Deserialize` (from `catga::prelude`) with `#[serde(crate = \"catga::serde\")]` on every type in the handler's return value, or run the query locally with `send`"
)]
pub trait RemoteAnswer: Serialize + DeserializeOwned {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> RemoteAnswer for T {}

/// What a field of a `#[command]`, `#[query]`, `#[event]` or `#[state]`
/// type must be: encodable, and decodable into an owned value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a catga message or state: it must be Serialize + Deserialize (into owned data) + Send",
    label = "this field is encoded into the log and decoded on every replica, on other threads",
    note = "use a type serde can encode and decode into an owned value: `String` not `&str`, `u64` milliseconds (from `ctx.timestamp_ms()`) not `Instant`/`SystemTime`, `Arc`/`Box` not `Rc`; for your own types derive `Serialize` and `Deserialize` with `#[serde(crate = \"catga::serde\")]`"
)]
pub trait WireField {
    #[doc(hidden)]
    const ASSERT: () = ();
}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send> WireField for T {}

/// A type that can be a state: [`State`], under a name of its own with no
/// supertrait, so that `<S as StateType>::ASSERT` is one error about the
/// state, not one per bound. (The same holds for [`CommandOutput`] and
/// [`WireField`].)
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a catga state",
    label = "a state must be Default + Serialize + Deserialize + Send + Sync + 'static",
    note = "declare it as `#[state] #[derive(Default)] struct {Self} {{ .. }}`: #[state] derives Serialize and Deserialize, `Default` is the initial state; every field must be Send + Sync and own its data"
)]
pub trait StateType {
    #[doc(hidden)]
    const ASSERT: () = ();
}
#[diagnostic::do_not_recommend]
impl<T: State> StateType for T {}

/// What a field of a `#[state]` type must be: encodable, decodable into an
/// owned value, and shareable between threads (a state is read by queries
/// while the state machine holds it). Checked on each field, so that a
/// field that cannot be part of a state is one error, on that field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a catga state: it must be Serialize + Deserialize (into owned data) + Send + Sync",
    label = "this field is written into snapshots and read by handlers on other threads",
    note = "use a type serde can encode and decode into an owned value that is Send + Sync: `String` not `&str`, `Arc` not `Rc`, `Mutex`/atomics not `Cell`/`RefCell` (or no interior mutability at all: a command handler gets `&mut State`); for your own types derive `Serialize` and `Deserialize` with `#[serde(crate = \"catga::serde\")]`"
)]
pub trait StateField {
    #[doc(hidden)]
    const ASSERT: () = ();
}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + Sync> StateField for T {}

/// What `#[state]` requires of the type itself when each of its fields is
/// checked as a [`StateField`] (the rest of [`State`] follows from them):
/// an initial value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a catga state: it has no initial value",
    label = "a state must implement `Default`: it is the state of a new cluster",
    note = "declare it as `#[state] #[derive(Default)] struct {Self} {{ .. }}`, or implement `Default` for it"
)]
pub trait StateInit {
    #[doc(hidden)]
    const ASSERT: () = ();
}
#[diagnostic::do_not_recommend]
impl<T: Default + 'static> StateInit for T {}

/// Probe for a state type `S`: `Stateful::<S>::INFO` is `StateInfo::of::<S>`
/// when `S:` [`StateType`], else a never-run stand-in (the assertion
/// `<S as StateType>` is the one error).
pub struct Stateful<S>(PhantomData<S>);
impl<S: State> Stateful<S> {
    pub const INFO: fn() -> StateInfo = StateInfo::of::<S>;
}
/// What `Stateful::<S>::INFO` falls back to.
pub trait StatefulFallback {
    const INFO: fn() -> StateInfo = refused;
}
impl<S> StatefulFallback for Stateful<S> {}

/// What one parameter after the message stands for.
#[derive(Clone, Copy)]
pub enum Slot {
    /// A state (its type's operations), and how it is taken.
    State(fn() -> StateInfo, Access),
    /// `&mut CommandContext`.
    CommandContext,
    /// `EventContext`.
    EventContext,
    /// A message (`#[command]`, `#[query]` or `#[event]`, by value): the
    /// first parameter, or one misplaced after it.
    Message(MessageKind),
    /// Stands in for a parameter whose type is refused (reported on its own).
    Refused,
}

/// How a handler takes its state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `&mut S`: a command changes it.
    Mut,
    /// `&S`: a query reads it.
    Shared,
    /// `S`: by value, which no handler can.
    Owned,
}

/// What a command handler's parameters are taken from.
pub struct CommandEnv<'a> {
    state: Cell<Option<&'a mut (dyn Any + Send + Sync)>>,
    ctx: Cell<Option<&'a mut CommandContext>>,
}

impl<'a> CommandEnv<'a> {
    pub fn new(state: &'a mut (dyn Any + Send + Sync), ctx: &'a mut CommandContext) -> Self {
        CommandEnv {
            state: Cell::new(Some(state)),
            ctx: Cell::new(Some(ctx)),
        }
    }
}

/// A parameter of a command handler, after the command: the state it
/// changes (`&mut S`, with `S:` [`State`]) and optionally `&mut CommandContext`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a command handler: after the command it takes `&mut State` and optionally `&mut CommandContext`",
    label = "neither `&mut` a state (a Default + Serialize + Deserialize + Send + Sync type) nor `&mut CommandContext`",
    note = "a command handler takes the command, then the state it changes as `&mut State`, and optionally `ctx: &mut CommandContext`, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop, ctx: &mut CommandContext)`"
)]
pub trait CommandParam<'a, const REPORTED: bool = false>: Sized {
    #[doc(hidden)]
    const SLOT: Slot;
    #[doc(hidden)]
    fn take(env: &CommandEnv<'a>) -> Option<Self>;
}

impl<'a, S: State> CommandParam<'a> for &'a mut S {
    const SLOT: Slot = Slot::State(StateInfo::of::<S>, Access::Mut);
    fn take(env: &CommandEnv<'a>) -> Option<Self> {
        env.state.take()?.downcast_mut::<S>()
    }
}

// A state read through `&S` is known here too, so that a query handler that
// takes `&mut CommandContext` (a command's shape) or a command handler that
// takes `&S` is one error from `check_param`, on the misplaced parameter,
// rather than this trait's plus a kind mismatch.
#[diagnostic::do_not_recommend]
impl<'a, S: State> CommandParam<'a> for &'a S {
    const SLOT: Slot = Slot::State(StateInfo::of::<S>, Access::Shared);
    fn take(_: &CommandEnv<'a>) -> Option<Self> {
        None
    }
}

impl<'a> CommandParam<'a> for &'a mut CommandContext {
    const SLOT: Slot = Slot::CommandContext;
    fn take(env: &CommandEnv<'a>) -> Option<Self> {
        env.ctx.take()
    }
}

/// A parameter of a query handler, after the query: the state it reads
/// (`&S`, with `S:` [`State`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a query handler: after the query it takes only the state it reads, as `&State`",
    label = "not `&` a state (a Default + Serialize + Deserialize + Send + Sync type)",
    note = "a query handler takes the query and optionally the state it reads as `&State`, and returns the answer, e.g. `fn count(q: CountOrders, shop: &Shop) -> u64`"
)]
pub trait QueryParam<'a, const REPORTED: bool = false>: Sized {
    #[doc(hidden)]
    const SLOT: Slot;
    #[doc(hidden)]
    fn take(env: &'a (dyn Any + Send + Sync)) -> Option<Self>;
}

impl<'a, S: State> QueryParam<'a> for &'a S {
    const SLOT: Slot = Slot::State(StateInfo::of::<S>, Access::Shared);
    fn take(env: &'a (dyn Any + Send + Sync)) -> Option<Self> {
        env.downcast_ref::<S>()
    }
}

/// A parameter of an event handler, after the event: `EventContext`.
///
/// `MESSAGE` is whether the parameter's type is a message (read from
/// `Probe::KIND` by the generated code): a message is `EventParam<true>`,
/// as `Slot::Message`, so that `fn on(ctx: EventContext, e: OrderPlaced)` is
/// one error, "move `e` to the front" (from [`check_moved_message`]), and
/// not also "`OrderPlaced` cannot be a parameter". (A message may also be a
/// [`State`], when it derives `Default`: the parameter keeps the two impls
/// apart. Defaulted, so rustc prints `EventParam`.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of an event handler: after the event it takes only `EventContext`, by value",
    label = "not the event context (`EventContext`, by value)",
    note = "an event handler takes the event and optionally `ctx: EventContext`, and returns nothing; it cannot read or change state (do that in a #[command] or #[query] handler)"
)]
pub trait EventParam<const MESSAGE: bool = false>: Sized {
    #[doc(hidden)]
    const SLOT: Slot;
    #[doc(hidden)]
    fn take(env: &Cell<Option<EventContext>>) -> Option<Self>;
}

impl EventParam for EventContext {
    const SLOT: Slot = Slot::EventContext;
    fn take(env: &Cell<Option<EventContext>>) -> Option<Self> {
        env.take()
    }
}

// A state taken by value is known here (a handler without `&`/`&mut`
// parameters has the shape of an event handler), so that it is one error
// from `check_param`, on that parameter: "take it as `&mut S`".
#[diagnostic::do_not_recommend]
impl<S: State> EventParam for S {
    const SLOT: Slot = Slot::State(StateInfo::of::<S>, Access::Owned);
    fn take(_: &Cell<Option<EventContext>>) -> Option<Self> {
        None
    }
}

#[diagnostic::do_not_recommend]
impl<M: crate::message::Message> EventParam<true> for M {
    const SLOT: Slot = Slot::Message(M::KIND);
    fn take(_: &Cell<Option<EventContext>>) -> Option<Self> {
        None
    }
}

/// The slot of an event handler's parameter: `Slot::Message` when its
/// type is a message (`kind`, from `Probe::KIND`), else `slot` (its
/// `EventParam` slot, from `Param::EVENT_SLOT`).
pub const fn event_slot(kind: Option<MessageKind>, slot: Slot) -> Slot {
    match kind {
        Some(kind) => Slot::Message(kind),
        None => slot,
    }
}

/// What an event handler's first parameter may be: a message, or a
/// context written before it (then [`check_message_first`] and
/// [`check_moved_message`] report, by type, where the message goes).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a catga message",
    label = "not annotated with #[command], #[query] or #[event]",
    note = "a handler takes its message first; annotate `{Self}` with `#[command]` (a replicated write), `#[query]` (a read) or `#[event]` (a notification)"
)]
pub trait FirstParam {
    #[doc(hidden)]
    const SLOT: Slot;
}
#[diagnostic::do_not_recommend]
impl<M: crate::message::Message> FirstParam for M {
    const SLOT: Slot = Slot::Message(M::KIND);
}
// (hidden from "other types implement": the advice is to annotate it)
#[diagnostic::do_not_recommend]
impl FirstParam for EventContext {
    const SLOT: Slot = Slot::EventContext;
}
#[diagnostic::do_not_recommend]
impl FirstParam for CommandContext {
    const SLOT: Slot = Slot::CommandContext;
}

/// Implemented by `#[state]` for its type, whatever its fields: a
/// `#[state]` type that is not a [`State`] (a field that is not `Send`,
/// `Sync`, or serializable; no `Default`) is reported on that field or on
/// the type, so a handler that takes it need not say it again.
pub trait DeclaredState {}

/// Probe for a type `S` that a handler borrows: whether it is declared
/// with `#[state]` (`DECLARED`) and whether it is a [`State`] (`STATE`).
pub struct StateProbe<S>(PhantomData<S>);
impl<S: DeclaredState> StateProbe<S> {
    pub const DECLARED: bool = true;
}
impl<S: State> StateProbe<S> {
    pub const STATE: bool = true;
}
/// What `StateProbe::<S>` falls back to.
pub trait StateProbeFallback {
    const DECLARED: bool = false;
    const STATE: bool = false;
}
impl<S> StateProbeFallback for StateProbe<S> {}

// `CommandParam<'a, true>` / `QueryParam<'a, true>`: a borrowed `#[state]`
// type that is not a `State`, already reported on its own (see
// `DeclaredState`); the generated code picks `REPORTED` from `StateProbe`.
// `Slot::Refused` keeps every other check silent.
#[diagnostic::do_not_recommend]
impl<'a, P> CommandParam<'a, true> for P {
    const SLOT: Slot = Slot::Refused;
    fn take(_: &CommandEnv<'a>) -> Option<Self> {
        None
    }
}
#[diagnostic::do_not_recommend]
impl<'a, P> QueryParam<'a, true> for P {
    const SLOT: Slot = Slot::Refused;
    fn take(_: &'a (dyn Any + Send + Sync)) -> Option<Self> {
        None
    }
}

/// Probe for a parameter type `P`: `Param::<P>::COMMAND_SLOT` and
/// `Param::<P>::command(env)` are the trait's when `P: CommandParam`, else
/// [`ParamFallback`]'s (a refused parameter is reported once, elsewhere).
pub struct Param<P>(PhantomData<P>);

impl<P: CommandParam<'static>> Param<P> {
    pub const COMMAND_SLOT: Slot = P::SLOT;
}
impl<P: QueryParam<'static>> Param<P> {
    pub const QUERY_SLOT: Slot = P::SLOT;
}
impl<P: FirstParam> Param<P> {
    pub const FIRST_SLOT: Slot = P::SLOT;
}
impl<P: EventParam> Param<P> {
    pub const EVENT_SLOT: Slot = P::SLOT;
    pub fn event(env: &Cell<Option<EventContext>>) -> Option<P> {
        P::take(env)
    }
}

impl<'a, P: CommandParam<'a>> Param<P> {
    pub fn command(env: &CommandEnv<'a>) -> Option<P> {
        P::take(env)
    }
}
impl<'a, P: QueryParam<'a>> Param<P> {
    pub fn query(env: &'a (dyn Any + Send + Sync)) -> Option<P> {
        P::take(env)
    }
}

/// What `Param::<P>` falls back to for a refused parameter type.
pub trait ParamFallback {
    const COMMAND_SLOT: Slot = Slot::Refused;
    const QUERY_SLOT: Slot = Slot::Refused;
    const EVENT_SLOT: Slot = Slot::Refused;
    const FIRST_SLOT: Slot = Slot::Refused;
}
impl<P> ParamFallback for Param<P> {}

/// What `Param::<P>::command`, `query` and `event` fall back to for a
/// refused parameter type.
pub trait TakeFallback<P> {
    fn command(_: &CommandEnv<'_>) -> Option<P> {
        None
    }
    fn query(_: &(dyn Any + Send + Sync)) -> Option<P> {
        None
    }
    fn event(_: &Cell<Option<EventContext>>) -> Option<P> {
        None
    }
}
impl<P> TakeFallback<P> for Param<P> {}

/// The shape of a handler, read from its signature: what the runtime will
/// give it, checked against the message's kind by [`check_kind`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Takes `&mut` state.
    Command,
    /// Takes `&` state.
    Query,
    /// Takes no state, returns a value.
    StatelessQuery,
    /// Takes no state, returns nothing.
    Event,
    /// Takes no state but other parameters (an event context), and returns
    /// a value.
    EventReturning,
}

/// Why `slot` cannot be a parameter of a handler of a `kind` message, if it
/// cannot: one sentence that says what to take instead.
const fn misplaced(kind: MessageKind, slot: Slot) -> Option<&'static str> {
    match (kind, slot) {
        (MessageKind::Command, Slot::State(_, Access::Shared)) => Some(
            "this is a #[command], so its handler takes the state it changes as `&mut State`, not `&State` \
             (a command handler: the command, `&mut State`, optionally `ctx: &mut CommandContext`; it returns the response); \
             if it only reads, make it a #[query]",
        ),
        (MessageKind::Command, Slot::State(_, Access::Owned)) => Some(
            "a command handler changes the state in place: take it as `&mut State`, not by value \
             (a command handler: the command, `&mut State`, optionally `ctx: &mut CommandContext`; it returns the response)",
        ),
        (MessageKind::Command, Slot::EventContext) => Some(
            "a command handler takes `ctx: &mut CommandContext`, not `EventContext` (the context of an #[event] handler)",
        ),
        (MessageKind::Query, Slot::State(_, Access::Mut)) => Some(
            "this is a #[query], so its handler reads the state as `&State`, not `&mut State` \
             (a query handler: the query and optionally `&State`; it returns the answer); if it changes state, make it a #[command]",
        ),
        (MessageKind::Query, Slot::State(_, Access::Owned)) => Some(
            "a query handler reads the state as `&State`, not by value \
             (a query handler: the query and optionally `&State`; it returns the answer)",
        ),
        (MessageKind::Query, Slot::CommandContext) => Some(
            "a query handler cannot take `&mut CommandContext`: a query changes nothing, so it has no log index and publishes no event; \
             remove this parameter (a query handler: the query and optionally `&State`), or make the message a #[command] if it changes state",
        ),
        (MessageKind::Query, Slot::EventContext) => Some(
            "a query handler takes no context: remove this parameter \
             (a query handler: the query and optionally `&State`; it returns the answer)",
        ),
        (MessageKind::Event, Slot::State(..)) => Some(
            "this is an #[event], so its handler cannot take state \
             (an event handler: the event and optionally `ctx: EventContext`; it returns nothing); \
             read or change state in a #[query] or #[command] handler",
        ),
        (MessageKind::Event, Slot::CommandContext) => Some(
            "an event handler takes `ctx: EventContext`, not `&mut CommandContext` (the context of a #[command] handler)",
        ),
        (_, Slot::Message(_)) => Some(
            "a handler takes one message, as its first parameter, and this is a second one: \
             a handler handles one message type (write one handler per message)",
        ),
        _ => None,
    }
}

/// Whether some parameter is reported by [`check_param`] (then the kind and
/// state checks stay silent: one mistake, one error).
const fn any_misplaced(kind: MessageKind, slots: &[Slot]) -> bool {
    let mut i = 0;
    while i < slots.len() {
        if misplaced(kind, slots[i]).is_some() {
            return true;
        }
        i += 1;
    }
    false
}

/// Compile-time check that a handler's shape fits its message's kind
/// (`None`: not a message, reported on its own). Panics, in a `const`, with
/// a sentence that names what the message is and what its handler may take.
/// Silent when a parameter is misplaced: [`check_param`] reports it there.
#[track_caller]
pub const fn check_kind(kind: Option<MessageKind>, shape: Shape, slots: &[Slot]) {
    let Some(kind) = kind else { return };
    if any_misplaced(kind, slots) {
        return;
    }
    match (kind, shape) {
        (MessageKind::Command, Shape::Command)
        | (MessageKind::Query, Shape::Query | Shape::StatelessQuery)
        | (MessageKind::Event, Shape::Event) => {}
        (MessageKind::Command, Shape::Query) => panic!(
            "this is a #[command], so its handler takes the state it changes as `&mut State`, not `&State` \
             (a command handler: the command, `&mut State`, optionally `ctx: &mut CommandContext`; it returns the response); \
             if it only reads, make it a #[query]"
        ),
        (MessageKind::Command, Shape::StatelessQuery | Shape::Event | Shape::EventReturning) => {
            panic!(
                "this is a #[command], so its handler takes the state it changes as `&mut State` \
             (a command handler: the command, `&mut State`, optionally `ctx: &mut CommandContext`; it returns the response)"
            )
        }
        (MessageKind::Query, Shape::Command) => panic!(
            "this is a #[query], so its handler reads the state as `&State`, not `&mut State` \
             (a query handler: the query and optionally `&State`; it returns the answer); if it changes state, make it a #[command]"
        ),
        (MessageKind::Query, Shape::Event) => panic!(
            "this is a #[query], so its handler returns the answer, e.g. `-> u64` \
             (a query handler: the query and optionally `&State`); if nobody waits for an answer, make it an #[event]"
        ),
        (MessageKind::Event, Shape::Command | Shape::Query) => panic!(
            "this is an #[event], so its handler cannot take state \
             (an event handler: the event and optionally `ctx: EventContext`; it returns nothing); \
             read or change state in a #[query] or #[command] handler"
        ),
        (MessageKind::Query, Shape::EventReturning) => panic!(
            "this is a #[query], so its handler takes the query and optionally the state it reads as `&State` \
             (no context), and returns the answer"
        ),
        (MessageKind::Event, Shape::StatelessQuery | Shape::EventReturning) => panic!(
            "this is an #[event], so its handler returns nothing: there is no caller to receive a value \
             (an event handler: the event and optionally `ctx: EventContext`); remove the return type"
        ),
    }
}

/// Compile-time check of one parameter: it fits a handler of its message's
/// kind (`None`: not a message, reported on its own), and it is not a
/// second state or context.
#[track_caller]
pub const fn check_param(kind: Option<MessageKind>, before: &[Slot], this: Slot) {
    if let Some(kind) = kind
        && let Some(why) = misplaced(kind, this)
    {
        panic!("{}", why)
    }
    let mut i = 0;
    while i < before.len() {
        match (before[i], this) {
            (Slot::State(..), Slot::State(..)) => panic!(
                "a handler takes at most one state, and this is a second one: keep the data one handler needs in one state type"
            ),
            (Slot::CommandContext, Slot::CommandContext)
            | (Slot::EventContext, Slot::EventContext) => {
                panic!("this context is already a parameter: take it once")
            }
            _ => {}
        }
        i += 1;
    }
}

/// Compile-time check, on an event handler's first parameter `first`,
/// that it is its message: when it is a context (`fn on(ctx: EventContext,
/// ..)`) and no later parameter is a message, panics with `why` ("add the
/// message before it"); when one is, [`check_moved_message`] reports there.
#[track_caller]
pub const fn check_message_first(first: Slot, later: &[Slot], why: &str) {
    if !matches!(first, Slot::CommandContext | Slot::EventContext) {
        return;
    }
    let mut i = 0;
    while i < later.len() {
        if matches!(later[i], Slot::Message(_)) {
            return;
        }
        i += 1;
    }
    panic!("{}", why)
}

/// Compile-time check, on a parameter `this` after an event handler's
/// first one: when the first is a context and this is the message, panics
/// with `why` ("move it to the front"). A message after a message is
/// [`check_param`]'s ("a second one").
#[track_caller]
pub const fn check_moved_message(first: Slot, this: Slot, why: &str) {
    if matches!(first, Slot::CommandContext | Slot::EventContext)
        && matches!(this, Slot::Message(_))
    {
        panic!("{}", why)
    }
}

/// Compile-time checks of a handler whose first parameter is a reference
/// (`fn f(shop: &mut Shop, cmd: PlaceOrder)`), by the types: on the first
/// parameter, `referent` the kind of what it borrows and `later` those of
/// the parameters taken by value. Panics with `by_value` when it borrows a
/// message, with `missing` when no parameter is a message; when a later
/// one is, [`check_message_after_ref`] reports there.
#[track_caller]
pub const fn check_ref_first(
    referent: Option<MessageKind>,
    later: &[Option<MessageKind>],
    by_value: &str,
    missing: &str,
) {
    if referent.is_some() {
        panic!("{}", by_value)
    }
    let mut i = 0;
    while i < later.len() {
        if later[i].is_some() {
            return;
        }
        i += 1;
    }
    panic!("{}", missing)
}

/// On a parameter taken by value after a first one that is a reference:
/// panics with `why` ("move it to the front") when this is the message.
#[track_caller]
pub const fn check_message_after_ref(
    referent: Option<MessageKind>,
    this: Option<MessageKind>,
    why: &str,
) {
    if referent.is_none() && this.is_some() {
        panic!("{}", why)
    }
}

/// The state among a command or query handler's parameters (checked by
/// [`check_param`] to be at most one, and by [`check_has_state`] to be there).
pub const fn state_of(slots: &[Slot]) -> fn() -> StateInfo {
    let mut i = 0;
    while i < slots.len() {
        match slots[i] {
            Slot::State(info, _) => return info,
            Slot::Refused => return refused,
            Slot::CommandContext | Slot::EventContext | Slot::Message(_) => {}
        }
        i += 1;
    }
    refused
}

/// Compile-time check that a command handler takes a state. Silent when
/// the message is not a command (the kind check reports that) or a
/// parameter is refused or misplaced (reported on its own).
#[track_caller]
pub const fn check_has_state(kind: Option<MessageKind>, slots: &[Slot]) {
    if !matches!(kind, Some(MessageKind::Command)) || any_misplaced(MessageKind::Command, slots) {
        return;
    }
    let mut i = 0;
    while i < slots.len() {
        if matches!(slots[i], Slot::State(..) | Slot::Refused) {
            return;
        }
        i += 1;
    }
    panic!(
        "a command handler takes the state it changes, e.g. `shop: &mut Shop`: add it after the command"
    )
}

fn refused() -> StateInfo {
    unreachable!("a refused handler parameter does not compile")
}

/// Probe for a field type `T` of a message or state: the serde functions
/// the generated `#[serde(serialize_with, deserialize_with)]` call. When `T`
/// is not a [`WireField`] they fall back to stand-ins that are never run
/// (the assertion `<T as WireField>` is the one error).
pub struct Field<T>(PhantomData<T>);

impl<T: Serialize + DeserializeOwned> Field<T> {
    pub fn serialize<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        T::deserialize(deserializer)
    }
}

/// What `Field::<T>` falls back to when `T` is not a [`WireField`].
pub trait FieldFallback<T> {
    fn serialize<S: Serializer>(_: &T, _: S) -> Result<S::Ok, S::Error> {
        unreachable!("a field that is not Serialize does not compile")
    }
    fn deserialize<'de, D: Deserializer<'de>>(_: D) -> Result<T, D::Error> {
        unreachable!("a field that is not Deserialize does not compile")
    }
}
impl<T> FieldFallback<T> for Field<T> {}

/// The route of a handler that was refused at expansion (its errors are
/// reported): keeps every `send` of its message free of a second error.
pub fn refused_run<M, O>(_: M) -> BoxFuture<'static, O> {
    unreachable!("a refused handler does not compile")
}

/// The answer decoder of a handler that was refused at expansion.
pub fn refused_decode<O>(_: &[u8]) -> Result<O, crate::error::ApplyError> {
    unreachable!("a refused handler does not compile")
}

/// The decoder of a field that borrows (`&'static str`): refused at
/// expansion (reported on the field), this keeps serde's derive general so
/// the mistake is one error.
pub fn refused_field<'de, D: Deserializer<'de>, T>(_: D) -> Result<T, D::Error> {
    unreachable!("a message with a borrowed field does not compile")
}
