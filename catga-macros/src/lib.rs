//! Procedural macros for [catga](https://docs.rs/catga).
//!
//! Use them through `catga` (`catga::command`, `catga::handler`, ... or
//! `catga::prelude::*`); the generated code names the runtime only through
//! `::catga::__private` (or `<crate>::__private` with `crate = "..."`), so a
//! user's crate depends on `catga` alone.
//!
//! The crate is laid out as parse → validate → expand, like thiserror:
//! - [`attr`]: the attribute arguments (`name`, `linearizable`, `route`, `crate`);
//! - [`ast`]: the item, parsed into a small model (a data type, a handler);
//! - [`valid`]: the checks that need no types, one function per rule;
//! - [`expand`]: code generation only; what depends on types is emitted as
//!   spanned assertions on the runtime's traits;
//! - [`fallback`]: with errors, the user's item plus stub impls plus the
//!   errors, so that one mistake does not cascade.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;

mod ast;
mod attr;
mod expand;
mod fallback;
mod valid;

use ast::DataItem;
use attr::Attr;
use fallback::Errors;

/// Marks a struct or enum as a command (a replicated write). See `catga::command`.
#[proc_macro_attribute]
pub fn command(args: TokenStream, item: TokenStream) -> TokenStream {
    data(Attr::Command, args.into(), item.into()).into()
}

/// Marks a struct or enum as a query (a read). See `catga::query`.
#[proc_macro_attribute]
pub fn query(args: TokenStream, item: TokenStream) -> TokenStream {
    data(Attr::Query, args.into(), item.into()).into()
}

/// Marks a struct or enum as an event. See `catga::event`.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    data(Attr::Event, args.into(), item.into()).into()
}

/// Marks a type as a replicated state, with a stable snapshot name. See `catga::state`.
#[proc_macro_attribute]
pub fn state(args: TokenStream, item: TokenStream) -> TokenStream {
    data(Attr::State, args.into(), item.into()).into()
}

/// Registers a function as the handler of a command, a query or an event. See `catga::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler_fn(args.into(), item.into()).into()
}

fn data(attr: Attr, args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let mut errors = Errors::default();
    // Malformed arguments are reported and ignored: the type is still a
    // message, so its handlers and senders see no further error.
    let mut args = attr::parse(args, attr, &mut errors);
    let expansion = match ast::data_item(item.clone()) {
        Ok(DataItem::Data(d)) => {
            valid::data(&d, attr, &mut errors);
            valid::route_key(&d, &mut args, &mut errors);
            if d.input.generics.params.is_empty() {
                Ok(expand::data::expand(attr, &args, d))
            } else {
                // Refused (generic): stub impls for a type with lifetimes
                // only, so that its handlers add no error.
                let stubs = expand::data::lifetime_stubs(attr, &args, &d);
                Err((item, stubs))
            }
        }
        Ok(DataItem::Union(u)) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                format!(
                    "#[{}] cannot be used on a union: use a struct or an enum",
                    attr.name()
                ),
            ));
            Err((item, TokenStream2::new()))
        }
        Ok(DataItem::Other(o)) => {
            errors.push(syn::Error::new(
                o.span,
                format!(
                    "#[{}] goes on a struct or an enum, not on {}",
                    attr.name(),
                    o.what
                ),
            ));
            Err((item, TokenStream2::new()))
        }
        Err(e) => {
            errors.push(e);
            Err((item, TokenStream2::new()))
        }
    };
    fallback::emit(expansion, errors)
}

fn handler_fn(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let mut errors = Errors::default();
    // Unknown arguments are reported, and the handler is still registered.
    let args = attr::parse(args, Attr::Handler, &mut errors);
    let expansion = match ast::handler_item(item.clone()) {
        Ok(Ok(h)) => {
            let before = errors.len();
            valid::handler(&h, &mut errors);
            if errors.len() > before {
                // Re-emit the function (without its foreign ABI, refused
                // above, so that rustc adds no warning about it), with the
                // stubs inside its body: valid wherever the function is.
                Err((expand::handler::refused(&args, &h), TokenStream2::new()))
            } else if valid::reference_first(&h) {
                // Refused too; its checks say by the types where the
                // message is (one error, from the type system).
                Err((
                    expand::handler::reference_first(&args, &h),
                    TokenStream2::new(),
                ))
            } else {
                Ok(expand::handler::expand(&args, &h))
            }
        }
        Ok(Err(o)) => {
            errors.push(syn::Error::new(
                o.span,
                format!("#[handler] goes on a free function, not on {}", o.what),
            ));
            Err((item, TokenStream2::new()))
        }
        Err(e) => {
            errors.push(e);
            Err((item, TokenStream2::new()))
        }
    };
    fallback::emit(expansion, errors)
}
