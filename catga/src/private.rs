//! Support for generated code. Not a public API: names here may change in
//! any release.

pub use inventory;
pub use rmp_serde;
pub use serde;

pub use crate::context::{CommandContext, EventContext};
pub use crate::error::ApplyError;
pub use crate::message::{
    BoxFuture, Command, Consistency, Event, Handled, Message, MessageKind, Query, Remote, Route,
    Routing,
};
pub use crate::registry::{
    CommandHandlerEntry, EventHandlerEntry, MessageEntry, QueryHandlerEntry, QueryRunner,
    StateEntry,
};
pub use crate::state::{State, StateInfo};

#[path = "private/handler.rs"]
mod handler;
pub use handler::*;

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
// error: the check is an assertion such as `<O as CommandOutput>::ASSERT`
// (no "required by a bound in" note naming this module), and every other use
// goes through a probe (`Probe`, `Output`, `Param`, `Field`) that falls back
// to a never-run stand-in when the bound does not hold.

/// Encoding and decoding of a command handler's output, built once by
/// [`Output`]`::<O>::CODEC` (where the `CommandOutput` bound is checked).
pub struct OutputCodec<O> {
    pub encode: fn(&O) -> Result<Vec<u8>, ApplyError>,
    pub decode: fn(&[u8]) -> Result<O, ApplyError>,
}

/// Probe for a command handler's output type `O`: `Output::<O>::CODEC`
/// is its codec when `O:` [`CommandOutput`], else [`OutputFallback`]'s
/// stand-in (the assertion `<O as CommandOutput>` is the one error).
pub struct Output<O>(PhantomData<O>);

impl<O: Serialize + DeserializeOwned + Send + 'static> Output<O> {
    pub const CODEC: OutputCodec<O> = OutputCodec {
        encode: encode_output::<O>,
        decode: decode_output::<O>,
    };
}

/// What `Output::<O>::CODEC` falls back to.
pub trait OutputFallback<O> {
    const CODEC: OutputCodec<O> = OutputCodec {
        encode: never_encode::<O>,
        decode: never_decode::<O>,
    };
}
impl<O> OutputFallback<O> for Output<O> {}

fn never_encode<O>(_: &O) -> Result<Vec<u8>, ApplyError> {
    unreachable!("a handler whose output type is refused does not compile")
}

fn never_decode<O>(_: &[u8]) -> Result<O, ApplyError> {
    unreachable!("a handler whose output type is refused does not compile")
}

fn encode_output<O: Serialize>(out: &O) -> Result<Vec<u8>, ApplyError> {
    rmp_serde::to_vec_named(out).map_err(|e| ApplyError::Encode {
        what: std::any::type_name::<O>().to_string(),
        reason: e.to_string(),
    })
}

/// Compile-time view of a handler's message type `M`.
///
/// A command or query handler implements `Handled` for its message, and an
/// event handler names `<M as Message>::NAME`: either already reports a
/// type that is not a message at all. Every other use must then stay
/// silent, or the user would get a second error for the same mistake:
/// `Probe::<M>::KIND` (and `CONSISTENCY`, `decode`) are the inherent items
/// only when `M: Message` (resp. `Query`), and [`ProbeFallback`]'s (which
/// pass every check and are never run) otherwise.
pub struct Probe<M>(PhantomData<M>);

impl<M: Message> Probe<M> {
    /// The wire name (for registry entries and errors).
    pub const NAME: &'static str = M::NAME;
    pub const KIND: Option<MessageKind> = Some(M::KIND);
    pub fn decode(bytes: &[u8]) -> Result<M, ApplyError> {
        decode_message::<M>(bytes)
    }
}

impl<M: Query> Probe<M> {
    pub const CONSISTENCY: Consistency = M::CONSISTENCY;
    pub const ROUTING: Routing<M> = M::ROUTING;
}

/// What `Probe::<M>`'s items fall back to when `M` is not a message (resp.
/// not a query); generated code imports it.
pub trait ProbeFallback<M> {
    const NAME: &'static str = "";
    const KIND: Option<MessageKind> = None;
    const CONSISTENCY: Consistency = Consistency::Local;
    const ROUTING: Routing<M> = Routing::Local;
    fn decode(_: &[u8]) -> Result<M, ApplyError> {
        unreachable!("a handler of a type that is not a message does not compile")
    }
}
impl<M> ProbeFallback<M> for Probe<M> {}

/// The error of a handler whose parameter could not be given: the state
/// slot holds another type.
pub fn missing_param(name: &str) -> ApplyError {
    ApplyError::Decode {
        what: name.to_string(),
        reason: "state slot holds another type".to_string(),
    }
}

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

/// Encoding and decoding of a query's answer when it crosses nodes
/// (`send_to`, routed queries), built by [`Answer`].
pub struct AnswerCodec<O> {
    /// Whether the answer can cross nodes at all.
    pub remote: bool,
    pub encode: fn(&O) -> Result<Vec<u8>, ApplyError>,
    pub decode: fn(&[u8]) -> Result<O, ApplyError>,
}

/// Probe for a query handler's output type `O`: `Answer::<O>::CODEC`
/// encodes and decodes it when it is Serialize + Deserialize, and otherwise
/// refuses at run time (a query whose answer cannot be encoded stays
/// `route = local`, which [`check_routable`] enforces at compile time, and
/// `send_to` requires an encodable answer in its signature).
pub struct Answer<O>(PhantomData<O>);

impl<O: Serialize + DeserializeOwned + Send + 'static> Answer<O> {
    pub const CODEC: AnswerCodec<O> = AnswerCodec {
        remote: true,
        encode: encode_output::<O>,
        decode: decode_output::<O>,
    };
}

/// What `Answer::<O>::CODEC` falls back to.
pub trait AnswerFallback<O> {
    const CODEC: AnswerCodec<O> = AnswerCodec {
        remote: false,
        encode: local_only_encode::<O>,
        decode: local_only_decode::<O>,
    };
}
impl<O> AnswerFallback<O> for Answer<O> {}

/// The codec of an answer that cannot leave its node (it borrows).
pub const fn local_answer<O>() -> AnswerCodec<O> {
    AnswerCodec {
        remote: false,
        encode: local_only_encode::<O>,
        decode: local_only_decode::<O>,
    }
}

fn local_only_encode<O>(_: &O) -> Result<Vec<u8>, ApplyError> {
    Err(ApplyError::Encode {
        what: std::any::type_name::<O>().to_string(),
        reason: "this query's answer is not Serialize + Deserialize, so it cannot leave its node"
            .to_string(),
    })
}

fn local_only_decode<O>(_: &[u8]) -> Result<O, ApplyError> {
    Err(ApplyError::Decode {
        what: std::any::type_name::<O>().to_string(),
        reason: "this query's answer is not Serialize + Deserialize, so it cannot leave its node"
            .to_string(),
    })
}

/// Compile-time check that a routed query's answer can travel between
/// nodes.
#[track_caller]
pub const fn check_routable(routed: bool, encodable: bool) {
    if routed && !encodable {
        panic!(
            "this query is routed to other nodes (`#[query(route = ...)]`), so its answer is sent back over the network: \
             the handler's return type must be Serialize + Deserialize (derive them with `#[serde(crate = \"catga::serde\")]`), \
             or the query must be `route = local`"
        )
    }
}

/// The routing key of a `#[query(route = key(field))]`: a stable 64-bit
/// hash (xxh3, no per-process seed) of the field's encoding, so that every
/// caller, in every process and build, computes the same key.
pub fn route_key<T: Serialize + ?Sized>(field: &T) -> u64 {
    match crate::codec::encode(field) {
        Ok(bytes) => xxhash_rust::xxh3::xxh3_64(&bytes),
        // a field that does not encode has no key; its send fails anyway
        Err(_) => 0,
    }
}
