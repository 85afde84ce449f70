//! Typed state slots: what a state type is, and how it is created,
//! snapshotted and restored without the runtime knowing its type.

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type the replicated state machine can hold: any
/// `Default + Serialize + DeserializeOwned + Send + Sync + 'static` type.
///
/// Each state has a snapshot name: the one given with
/// `#[state(name = "...")]`, else `module::path::Type` for a type annotated
/// with `#[state]`, else [`std::any::type_name`]. Annotate your states with
/// `#[state]` so the name does not depend on the compiler; see
/// [`crate::testing::state_names`] for the names in use.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a catga state",
    label = "a state must be Default + Serialize + Deserialize + Send + Sync + 'static",
    note = "declare it as `#[state] #[derive(Default)] struct {Self} {{ .. }}`: #[state] derives Serialize and Deserialize, `Default` is the initial state; every field must be Send + Sync and own its data"
)]
pub trait State: Default + Serialize + DeserializeOwned + Send + Sync + 'static {}
#[diagnostic::do_not_recommend]
impl<T: Default + Serialize + DeserializeOwned + Send + Sync + 'static> State for T {}

/// A state slot, type-erased.
pub(crate) type Slot = Box<dyn Any + Send + Sync>;

/// Type-erased operations on one state type. Built by [`StateInfo::of`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StateInfo {
    pub type_id: TypeId,
    pub type_name: &'static str,
    pub new: fn() -> Slot,
    pub encode: fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>, String>,
    pub decode: fn(&[u8]) -> Result<Slot, String>,
    /// Encodes the state straight into a writer (snapshots: no copy of the
    /// whole state in memory).
    pub encode_to: fn(&(dyn Any + Send + Sync), &mut dyn std::io::Write) -> Result<(), String>,
    /// Decodes one state from a reader, reading no byte past its end.
    pub decode_from: fn(&mut dyn std::io::Read) -> Result<Slot, String>,
}

impl StateInfo {
    /// The operations of state type `S`.
    pub fn of<S: State>() -> StateInfo {
        StateInfo {
            type_id: TypeId::of::<S>(),
            type_name: std::any::type_name::<S>(),
            new: || Box::new(S::default()),
            encode: |slot| match slot.downcast_ref::<S>() {
                Some(s) => crate::codec::encode(s).map_err(|e| e.to_string()),
                None => Err("state slot holds another type".into()),
            },
            decode: |bytes| {
                crate::codec::decode::<S>(bytes, crate::codec::USER_DEPTH)
                    .map(|s| Box::new(s) as Slot)
                    .map_err(|e| e.to_string())
            },
            encode_to: |slot, w| match slot.downcast_ref::<S>() {
                Some(s) => crate::codec::encode_into(w, s).map_err(|e| e.to_string()),
                None => Err("state slot holds another type".into()),
            },
            decode_from: |r| {
                crate::codec::decode_from::<S>(r, crate::codec::USER_DEPTH)
                    .map(|s| Box::new(s) as Slot)
                    .map_err(|e| e.to_string())
            },
        }
    }
}
