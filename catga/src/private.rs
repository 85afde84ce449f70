//! Support for generated code. Not a public API: names here may change in
//! any release.

pub use inventory;
pub use rmp_serde;
pub use serde;

pub use crate::context::{CommandContext, EventContext};
pub use crate::error::ApplyError;
pub use crate::message::{
    BoxFuture, Command, Consistency, Event, Handled, Message, MessageKind, Query, Route,
};
pub use crate::registry::{
    CommandHandlerEntry, EventHandlerEntry, MessageEntry, QueryHandlerEntry, StateEntry,
};
pub use crate::state::{State, StateInfo};

/// The log and wire formats, for catga's own tests, benches and fuzz
/// target (so they speak the real format instead of a copy).
pub mod wire {
    pub use crate::context::PublishedEvent;
    pub use crate::machine::{Applied, EntryKind, Envelope, Machine};
    pub use crate::raft::TC;
    pub use crate::raft::wire::{Redirect, Rpc};
    pub use crate::transport::{Frame, FrameError, Ident, decode_frame, decode_stream};
}

use std::any::Any;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

// Every trait bound that the generated code needs on a user's type is checked
// at exactly one place, spanned on that type, so that one mistake is one
// error: `#[handler]` builds the codecs below once per handler (in a `const`)
// and hands them to the generic runtime functions, which need no bound on the
// user's types beyond `Handled` (which the handler itself implements).

/// What a command handler may return: it is encoded into the replicated
/// response and decoded by the caller, possibly on another node.
#[diagnostic::on_unimplemented(
    message = "a command handler must return a type that can be sent back to the caller: `{Self}` is not Serialize + Deserialize + Send",
    label = "the response is encoded on the replica and decoded by the caller, possibly on another node",
    note = "derive `Serialize` and `Deserialize` (from `catga::prelude`) with `#[serde(crate = \"catga::serde\")]` on every type in the return value, including the error type of a `Result`"
)]
pub trait CommandOutput: Serialize + DeserializeOwned + Send + 'static {}
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> CommandOutput for T {}

/// Encoding and decoding of a command handler's output, built once by
/// [`output_codec`] (where the `CommandOutput` bound is checked).
pub struct OutputCodec<O> {
    pub encode: fn(&O) -> Result<Vec<u8>, ApplyError>,
    pub decode: fn(&[u8]) -> Result<O, ApplyError>,
}

/// The codec of a command handler's output type.
pub const fn output_codec<O: CommandOutput>() -> OutputCodec<O> {
    OutputCodec {
        encode: encode_output::<O>,
        decode: decode_output::<O>,
    }
}

fn encode_output<O: Serialize>(out: &O) -> Result<Vec<u8>, ApplyError> {
    rmp_serde::to_vec_named(out).map_err(|e| ApplyError::Encode {
        what: std::any::type_name::<O>().to_string(),
        reason: e.to_string(),
    })
}

/// The wire name and decoder of an event, built once by [`event_codec`]
/// (where the `Event` bound is checked).
pub struct EventCodec<E> {
    pub name: &'static str,
    pub decode: fn(&[u8]) -> Result<E, ApplyError>,
}

/// The codec of an event handler's event.
pub const fn event_codec<E: Event>() -> EventCodec<E> {
    EventCodec {
        name: E::NAME,
        decode: decode_message::<E>,
    }
}

/// The wire name of a handled message (for registry entries).
pub const fn name_of<M: Handled>() -> &'static str {
    M::NAME
}

/// Compile-time classification of a handler's message type.
///
/// A command or query handler implements `Handled` for its message, which
/// already reports a type that is not a message at all. The kind check
/// (`require_command(&Probe::<M>::KIND)`) must then stay silent, or the user
/// would get a second error for the same mistake: `Probe::<M>::KIND` is the
/// inherent constant (a `PhantomData<M>`) only when `M: Message`, and
/// [`ProbeFallback::KIND`] (a `PhantomData<Skip>`, which passes every check)
/// otherwise.
pub struct Probe<M>(PhantomData<M>);

impl<M: Message> Probe<M> {
    pub const KIND: PhantomData<M> = PhantomData;
}

impl<M: Query> Probe<M> {
    pub const CONSISTENCY: Consistency = M::CONSISTENCY;
}

/// What `Probe::<M>::KIND` and `Probe::<M>::CONSISTENCY` fall back to when
/// `M` is not a message (resp. not a query); generated code imports it.
pub trait ProbeFallback {
    const KIND: PhantomData<Skip> = PhantomData;
    const CONSISTENCY: Consistency = Consistency::Local;
}
impl<M> ProbeFallback for Probe<M> {}

/// Stands in for a type that is not a message, so that its kind check
/// passes (the missing `Message` impl is reported on its own). Never
/// registered, never constructed.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Skip {}

#[diagnostic::do_not_recommend]
impl Message for Skip {
    const NAME: &'static str = "catga.__private.Skip";
    const KIND: MessageKind = MessageKind::Command;
}
#[diagnostic::do_not_recommend]
impl Command for Skip {}
#[diagnostic::do_not_recommend]
impl Query for Skip {}

/// Compile-time check: a `&mut State` handler's message is a `#[command]`.
pub const fn require_command<M: Command>(_: &PhantomData<M>) {}
/// Compile-time check: a `&State` or value-returning handler's message is a `#[query]`.
pub const fn require_query<M: Query>(_: &PhantomData<M>) {}

/// Decodes a command's response.
pub fn decode_output<O: DeserializeOwned>(bytes: &[u8]) -> Result<O, ApplyError> {
    crate::codec::decode(bytes, crate::codec::USER_DEPTH).map_err(|e| ApplyError::Decode {
        what: std::any::type_name::<O>().to_string(),
        reason: e.to_string(),
    })
}

/// Decodes a message.
pub fn decode_message<M: Message>(bytes: &[u8]) -> Result<M, ApplyError> {
    crate::codec::decode(bytes, crate::codec::USER_DEPTH).map_err(|e| ApplyError::Decode {
        what: M::NAME.to_string(),
        reason: e.to_string(),
    })
}

/// A typed view of a type-erased state.
#[inline]
pub fn downcast_state<S: 'static>(state: &(dyn Any + Send + Sync)) -> Option<&S> {
    state.downcast_ref::<S>()
}

/// Decode → handler → encode, for one command.
#[inline]
pub fn apply_command<M, S, O, F>(
    payload: &[u8],
    state: &mut (dyn Any + Send + Sync),
    ctx: &mut CommandContext,
    encode: fn(&O) -> Result<Vec<u8>, ApplyError>,
    handler: F,
) -> Result<Vec<u8>, ApplyError>
where
    M: Handled,
    S: Any,
    F: FnOnce(M, &mut S, &mut CommandContext) -> O,
{
    let cmd: M = decode_message(payload)?;
    let Some(state) = state.downcast_mut::<S>() else {
        return Err(ApplyError::Decode {
            what: M::NAME.to_string(),
            reason: "state slot holds another type".to_string(),
        });
    };
    let out = handler(cmd, state, ctx);
    encode(&out)
}
