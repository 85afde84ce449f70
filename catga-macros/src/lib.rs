//! Procedural macros for [catga](https://docs.rs/catga).
//!
//! Use them through `catga` (`catga::command`, `catga::handler`, ... or
//! `catga::prelude::*`); the generated code names the runtime only through
//! `::catga::__private`, so a user's crate depends on `catga` alone.
//!
//! The crate is laid out as parse → validate → expand:
//! - [`args`] — the attribute arguments (`name = "..."`, `linearizable`);
//! - [`message`] — `#[command]`, `#[query]`, `#[event]`;
//! - [`handler`] — `#[handler]` (parse and classify the signature, then expand);
//! - [`state`] — `#[state]`;
//! - [`fallback`] — on error, re-emit the user's item next to the errors so
//!   that one mistake does not cascade into many.
//!
//! Every trait bound the expansion needs on a user's type is required at
//! exactly one place, spanned on that type (see `catga::__private`), so that
//! one mistake is one error, with the runtime's `on_unimplemented` text.

use proc_macro::TokenStream;

mod args;
mod fallback;
mod handler;
mod message;
mod state;

/// Marks a struct or enum as a command (a replicated write). See `catga::command`.
#[proc_macro_attribute]
pub fn command(args: TokenStream, item: TokenStream) -> TokenStream {
    message::expand(message::Kind::Command, args.into(), item.into()).into()
}

/// Marks a struct or enum as a query (a read). See `catga::query`.
#[proc_macro_attribute]
pub fn query(args: TokenStream, item: TokenStream) -> TokenStream {
    message::expand(message::Kind::Query, args.into(), item.into()).into()
}

/// Marks a struct or enum as an event. See `catga::event`.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    message::expand(message::Kind::Event, args.into(), item.into()).into()
}

/// Registers a function as the handler of a command, a query or an event. See `catga::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), item.into()).into()
}

/// Marks a type as a replicated state, with a stable snapshot name. See `catga::state`.
#[proc_macro_attribute]
pub fn state(args: TokenStream, item: TokenStream) -> TokenStream {
    state::expand(args.into(), item.into()).into()
}
