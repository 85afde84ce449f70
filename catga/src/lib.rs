#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

extern crate self as catga;

mod cluster;
mod codec;
mod context;
mod dedup;
mod error;
mod health;
mod machine;
mod message;
mod raft;
mod registry;
mod state;
pub mod testing;
pub mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use cluster::{ClusterBuilder, Node, cluster};
pub use context::{CommandContext, EventContext, PublishedEvent};
pub use error::{ApplyError, Error, Result};
pub use health::{Health, Role};
pub use machine::{Applied, EntryKind, Envelope, Machine};
pub use message::{Command, Consistency, Event, Handled, Message, MessageKind, Query};
// Named in compile errors about handler signatures and `query`/`publish`
// calls; re-exported here (hidden) so rustc prints `CommandParam`, not a path
// under `__private`. Not for use.
#[doc(hidden)]
pub use __private::{CommandOutput, CommandParam, EventParam, QueryParam, StateType, WireField};
#[doc(hidden)]
pub use message::{Publishable, Queryable};
pub use registry::state_names;
pub use state::State;

/// serde, re-exported so that your own types can derive `Serialize` and
/// `Deserialize` without another dependency:
/// `#[derive(catga::serde::Serialize)] #[serde(crate = "catga::serde")]`.
pub use serde;

#[doc = include_str!("../docs/command.md")]
pub use catga_macros::command;
#[doc = include_str!("../docs/event.md")]
pub use catga_macros::event;
#[doc = include_str!("../docs/handler.md")]
pub use catga_macros::handler;
#[doc = include_str!("../docs/query.md")]
pub use catga_macros::query;
#[doc = include_str!("../docs/state.md")]
pub use catga_macros::state;

/// Everything a service needs: `use catga::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Command, CommandContext, Consistency, Event, EventContext, Handled, Message, Query, State,
        command, event, handler, query, state,
    };
    pub use serde::{Deserialize, Serialize};
}
