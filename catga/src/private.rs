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

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;

/// Compile-time check: `C` is a `#[command]`.
pub fn assert_command<C: Command>() {}
/// Compile-time check: `Q` is a `#[query]`.
pub fn assert_query<Q: Query>() {}
/// Compile-time check: `E` is an `#[event]`.
pub fn assert_event<E: Event>() {}
/// Compile-time check: `S` can be a state.
pub fn assert_state<S: State>() {}
/// Compile-time check: a command handler's output crosses the network.
pub fn assert_command_output<O: CommandOutput>() {}

/// What a command handler may return: it is encoded into the replicated
/// response and decoded by the caller, possibly on another node.
#[diagnostic::on_unimplemented(
    message = "a command handler's return type must be Serialize + Deserialize + Send: `{Self}` is not",
    label = "the response is sent back to the caller, possibly from another node",
    note = "derive `Serialize` and `Deserialize` (from `catga::serde`) for the value and error types the handler returns"
)]
pub trait CommandOutput: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> CommandOutput for T {}

/// Decodes a command's response.
pub fn decode_output<O: DeserializeOwned>(bytes: &[u8]) -> Result<O, ApplyError> {
    rmp_serde::from_slice(bytes).map_err(|e| ApplyError::Decode {
        what: std::any::type_name::<O>().to_string(),
        reason: e.to_string(),
    })
}

/// Decodes a message.
pub fn decode_message<M: Message>(bytes: &[u8]) -> Result<M, ApplyError> {
    rmp_serde::from_slice(bytes).map_err(|e| ApplyError::Decode {
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
pub fn apply_command<C, S, O, F>(
    payload: &[u8],
    state: &mut (dyn Any + Send + Sync),
    ctx: &mut CommandContext,
    handler: F,
) -> Result<Vec<u8>, ApplyError>
where
    C: Command,
    S: State,
    O: Serialize,
    F: FnOnce(C, &mut S, &mut CommandContext) -> O,
{
    let cmd: C = decode_message(payload)?;
    let Some(state) = state.downcast_mut::<S>() else {
        return Err(ApplyError::Decode {
            what: C::NAME.to_string(),
            reason: "state slot holds another type".to_string(),
        });
    };
    let out = handler(cmd, state, ctx);
    rmp_serde::to_vec_named(&out).map_err(|e| ApplyError::Encode {
        what: std::any::type_name::<O>().to_string(),
        reason: e.to_string(),
    })
}
