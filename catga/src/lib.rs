#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![warn(missing_debug_implementations)]

// The module map. Arrows run down this list, never up:
//
//   http/        axum routes over a `Node` (feature `http`)
//   node/        the builder, the `Node` handle and its `Reply` future,
//                health; `node/selfform`: a cluster that forms and grows
//                by itself (store records, safe bootstrap, the leader's
//                membership reconciler)
//   mediator/    members, send_to, routes declared on query types, broadcast:
//                its own RPC service beside Raft's on the transport
//   discovery/   NodeInfo, the Discovery trait, static / Redis / NATS backends;
//                it only reports (joined, updated, left), nothing imports raft
//   raft/        openraft glue: log, state machine adapter, network, RPC service
//   transport/   authenticated, multiplexed TCP between nodes
//   machine, dispatch, dedup    the deterministic core: no I/O, no clocks
//   registry, message, state, context    what users' types and the macros touch
//   codec, error, probe         leaves: the one codec, the error types
//                               (discovery's too), the write path's stage
//                               timings (benchmarks)
//   tls                         a leaf: certificates and keys (TlsConfig,
//                               reloaded on change), the dev CA
//
// `testing` (TestApp and the cluster-test hooks) and `__private` (support for
// generated code, and the wire types for catga's own tests) sit beside the
// map: the runtime never imports them.

extern crate self as catga;

mod codec;
mod context;
mod dedup;
pub mod discovery;
mod dispatch;
pub mod error;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod machine;
mod mediator;
mod message;
mod node;
mod probe;
mod raft;
mod registry;
mod state;
pub mod testing;
pub mod tls;
mod transport;

/// The cluster's members as a node sees them ([`Node::members`]: role,
/// liveness, load, metadata) and each member's outcome of a
/// [`Node::broadcast`].
pub mod members {
    pub use crate::mediator::{Delivery, Liveness, Member, MemberRole};
}

#[doc(hidden)]
#[path = "private.rs"]
#[allow(missing_debug_implementations)]
pub mod __private;

pub use context::{CommandContext, EventContext};
pub use error::{ApplyError, Error, Outcome, Result};
pub use message::{Command, Consistency, Event, Handled, Message, MessageKind, Query, Routing};
// Named in compile errors about handler signatures and `query`/`publish`
// calls; re-exported here (hidden) so rustc prints `CommandParam`, not a path
// under `__private`. Not for use.
#[doc(hidden)]
pub use __private::{
    CommandOutput, CommandParam, EventParam, FirstParam, QueryParam, RemoteAnswer, StateField,
    StateInit, StateType, WireField,
};
#[doc(hidden)]
pub use message::{Publishable, Queryable};
pub use node::{ClusterBuilder, Health, Node, Poisoned, Quarantine, Reply, Role, cluster};
pub use state::State;
pub use tls::TlsConfig;

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

// The repository's README and the guides are compiled (and run where
// they can) as doctests: every Rust block a user reads must build. A guide
// whose blocks need a feature is tested when that feature is on
// (`cargo test -p catga --doc --all-features`).
#[cfg(doctest)]
#[allow(dead_code)]
mod guides {
    #[doc = include_str!("../../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/guides/running.md")]
    struct Running;
    #[cfg(feature = "redis")]
    #[doc = include_str!("../docs/guides/discovery.md")]
    struct Discovery;
    #[cfg(feature = "http")]
    #[doc = include_str!("../docs/guides/http.md")]
    struct Http;
    #[doc = include_str!("../docs/guides/operations.md")]
    struct Operations;
    #[doc = include_str!("../docs/guides/exactly-once.md")]
    struct ExactlyOnce;
    #[doc = include_str!("../docs/guides/testing.md")]
    struct Testing;
    #[doc = include_str!("../docs/guides/benchmarks.md")]
    struct Benchmarks;
    #[doc = include_str!("../docs/guides/security.md")]
    struct Security;
}

#[cfg(test)]
mod readme {
    /// The first Rust block of a markdown file.
    fn first_rust_block(md: &str) -> Option<&str> {
        md.split("```rust,no_run\n").nth(1)?.split("```").next()
    }

    #[test]
    fn the_quick_start_in_both_readmes_is_the_quickstart_example_as_is() {
        let example = include_str!("../../examples/examples/quickstart.rs");
        let root = include_str!("../../README.md");
        let crate_readme = include_str!("../README.md");
        assert_eq!(first_rust_block(root), Some(example), "README.md");
        assert_eq!(
            first_rust_block(crate_readme),
            Some(example),
            "catga/README.md"
        );
    }

    #[test]
    fn the_readme_is_a_landing_page_of_at_most_300_lines() {
        let lines = include_str!("../../README.md").lines().count();
        assert!(
            lines <= 300,
            "README.md has {lines} lines; move depth to a guide"
        );
    }
}

/// Everything a service needs: `use catga::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Command, CommandContext, Consistency, Event, EventContext, Handled, Message, Query, State,
        command, event, handler, query, state,
    };
    pub use serde::{Deserialize, Serialize};
}
