//! The checks that need no type information, one function per rule. Each
//! error is spanned on the offending tokens and says what to do; all are
//! accumulated. Everything that depends on what a type IS (a message of
//! which kind, a state, a context, serializable or not) is left to the type
//! system, in generated code.

use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{Attribute, GenericParam, Meta, Path, Token, Type};

use crate::ast::{DataType, Handler, Shape, strip};
use crate::attr::{Args, Attr, Route};
use crate::fallback::Errors;

// ---- data types -----------------------------------------------------------

pub fn data(data: &DataType, attr: Attr, errors: &mut Errors) {
    one_kind(&data.input.attrs, attr, errors);
    if borrows_through_lifetimes(data, attr, errors) {
        // the one error about borrowing; each field would say it again
    } else {
        not_generic(data, attr, errors);
        owned_fields(data, errors);
    }
    no_serde_derive(&data.input.attrs, attr, errors);
    derived_above(&data.input.attrs, attr, errors);
}

/// The message attributes: a type is one kind of message.
const KINDS: [Attr; 3] = [Attr::Command, Attr::Query, Attr::Event];

/// Which message attribute `a` is, if it is one (`#[query]`,
/// `#[catga::query]`, by its last segment, as written above the item).
pub fn message_attr(a: &Attribute) -> Option<Attr> {
    let last = a.path().segments.last()?;
    KINDS.into_iter().find(|k| last.ident == k.name())
}

/// `#[command] #[query] struct X`: the first attribute sees the second
/// (rustc expands them top to bottom). One error, on the second; the
/// expansion drops it (see `expand::data`), so it adds nothing more.
fn one_kind(attrs: &[Attribute], attr: Attr, errors: &mut Errors) {
    if !KINDS.contains(&attr) {
        return;
    }
    for a in attrs {
        let Some(other) = message_attr(a) else {
            continue;
        };
        let both = if other == attr {
            format!("#[{}] is written twice: write it once", attr.name())
        } else {
            format!(
                "a type is one kind of message, not both #[{}] and #[{}]: keep one (a #[command] changes state, a #[query] reads it, an #[event] tells every node)",
                attr.name(),
                other.name()
            )
        };
        errors.push(syn::Error::new_spanned(a, both));
    }
}

/// A message or state with lifetime parameters only, whose fields borrow
/// through them (`struct Rename<'a> { name: &'a str }`): one error, on the
/// lifetimes, that says what to change. Returns whether it reported it.
fn borrows_through_lifetimes(data: &DataType, attr: Attr, errors: &mut Errors) -> bool {
    let generics = &data.input.generics;
    if generics.params.is_empty()
        || !generics
            .params
            .iter()
            .all(|p| matches!(p, GenericParam::Lifetime(_)))
    {
        return false;
    }
    let borrowed: Vec<String> = fields(data)
        .into_iter()
        .filter(|f| borrows(&f.ty) || mentions_lifetime(&f.ty))
        .map(|f| format!("`{}`", pretty(&f.ty)))
        .collect();
    if borrowed.is_empty() {
        return false;
    }
    let what = if attr == Attr::State {
        "a state"
    } else {
        "a message"
    };
    errors.push(syn::Error::new_spanned(
        generics,
        format!(
            "#[{}] types cannot borrow: {what} is decoded on every replica from bytes that do not outlive the decoding; \
             remove the lifetime and give its fields owned types ({} borrows; use `String` for `&str`, `Vec<T>` for `&[T]`)",
            attr.name(),
            borrowed.join(", ")
        ),
    ));
    true
}

/// Whether `ty` names a lifetime (`Cow<'a, str>`, `&'static str`).
pub fn mentions_lifetime(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_lifetime(&mut self, _: &'a syn::Lifetime) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

fn fields(data: &DataType) -> Vec<&syn::Field> {
    match &data.input.data {
        syn::Data::Struct(s) => s.fields.iter().collect(),
        syn::Data::Enum(e) => e.variants.iter().flat_map(|v| v.fields.iter()).collect(),
        syn::Data::Union(_) => Vec::new(),
    }
}

/// `#[derive(Serialize)] #[serde(crate = "...")] #[command] struct X`: the
/// derive above the attribute has already run (rustc hands us the item
/// without it), so the item carries `crate = "..."` and no serde derive.
/// Its impls are then kept (see `expand::data`) and this is the one error.
/// (Without `crate = "..."` that derive fails on its own, naming the
/// `serde` crate the user does not depend on; nothing of it reaches us.)
fn derived_above(attrs: &[Attribute], attr: Attr, errors: &mut Errors) {
    if attrs.iter().any(|a| serde_derives(a).is_some()) {
        return;
    }
    if let Some(krate) = serde_crate(attrs) {
        errors.push(syn::Error::new_spanned(
            krate,
            format!(
                "#[{}] derives Serialize and Deserialize itself (through catga's own serde): remove the `#[derive(..)]` of `Serialize` and `Deserialize` above #[{}], and this `crate = ..`",
                attr.name(),
                attr.name()
            ),
        ));
    }
}

/// The `crate = "..."` of a `#[serde(...)]` among `attrs`.
pub fn serde_crate(attrs: &[Attribute]) -> Option<Meta> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .filter_map(|a| {
            a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .find(|m| m.path().is_ident("crate"))
}

/// `route = key(field)` names a field of the query (a struct's): otherwise
/// the route is reported and dropped, so that the expansion adds no error.
pub fn route_key(data: &DataType, args: &mut Args, errors: &mut Errors) {
    let Some(Route::Key(member)) = &args.route else {
        return;
    };
    let found = match &data.input.data {
        syn::Data::Struct(s) => match (member, &s.fields) {
            (syn::Member::Named(id), syn::Fields::Named(f)) => {
                f.named.iter().any(|f| f.ident.as_ref() == Some(id))
            }
            (syn::Member::Unnamed(i), syn::Fields::Unnamed(f)) => {
                (i.index as usize) < f.unnamed.len()
            }
            _ => false,
        },
        _ => {
            errors.push(syn::Error::new_spanned(
                member,
                "`route = key(...)` needs a struct: an enum's variants have no field in common; route it with `round_robin` or `least_loaded`, or hash a struct",
            ));
            args.route = None;
            return;
        }
    };
    if !found {
        let what = match member {
            syn::Member::Named(id) => format!("`{id}`"),
            syn::Member::Unnamed(i) => format!("`{}`", i.index),
        };
        errors.push(syn::Error::new_spanned(
            member,
            format!(
                "`{}` has no field {what} to route by: `route = key(field)` names one of its fields",
                data.input.ident
            ),
        ));
        args.route = None;
    }
}

/// Whether `ty` contains a reference (`&'static str`, `Vec<&'static [u8]>`).
pub fn borrows(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_reference(&mut self, _: &'a syn::TypeReference) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// A field that borrows cannot be decoded from the log (the bytes do not
/// outlive the decoding), even as `&'static`.
fn owned_fields(data: &DataType, errors: &mut Errors) {
    for f in fields(data) {
        if borrows(&f.ty) {
            errors.push(syn::Error::new_spanned(
                &f.ty,
                format!(
                    "a field of a message or state must own its data: `{}` borrows, and a replica decodes it from bytes that do not outlive the decoding; use an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)",
                    pretty(&f.ty)
                ),
            ));
        }
    }
}

fn not_generic(data: &DataType, attr: Attr, errors: &mut Errors) {
    if !data.input.generics.params.is_empty() {
        let what = if attr == Attr::State {
            "snapshot name"
        } else {
            "wire name"
        };
        errors.push(syn::Error::new_spanned(
            &data.input.generics,
            format!(
                "#[{}] types cannot be generic: each {what} must stand for one concrete type",
                attr.name()
            ),
        ));
    }
}

/// The paths in `#[derive(...)]` that are serde's `Serialize` or
/// `Deserialize` (by last segment: the prelude's, serde's, or catga's).
pub fn serde_derives(a: &Attribute) -> Option<(Vec<Path>, Vec<Path>)> {
    if !a.path().is_ident("derive") {
        return None;
    }
    let paths = a
        .parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        .ok()?;
    let (serde, rest): (Vec<Path>, Vec<Path>) = paths.into_iter().partition(|p| {
        p.segments
            .last()
            .is_some_and(|s| s.ident == "Serialize" || s.ident == "Deserialize")
    });
    (!serde.is_empty()).then_some((serde, rest))
}

fn no_serde_derive(attrs: &[Attribute], attr: Attr, errors: &mut Errors) {
    for a in attrs {
        let Some((serde, _)) = serde_derives(a) else {
            continue;
        };
        // One error per derive, spanned on its serde paths (first to last).
        let names: Vec<String> = serde
            .iter()
            .map(|p| format!("`{}`", p.segments.last().expect("partitioned on it").ident))
            .collect();
        let (first, last) = (&serde[0], &serde[serde.len() - 1]);
        errors.push(syn::Error::new_spanned(
            quote::quote!(#first #last),
            format!(
                "#[{}] derives Serialize and Deserialize itself (through catga's own serde): remove {} from this derive",
                attr.name(),
                names.join(" and ")
            ),
        ));
    }
}

// ---- handlers -------------------------------------------------------------

pub fn handler(h: &Handler, errors: &mut Errors) {
    rust_abi(h, errors);
    not_const_unsafe_variadic(h, errors);
    no_type_generics(h, errors);
    no_receiver(h, errors);
    has_message(h, errors);
    sync_when_stateful(h, errors);
    owned_output(h, errors);
}

/// `extern "C" fn` cannot unwind: a panic in the handler would abort the
/// process instead of becoming `ApplyError::Panicked`, and since the entry
/// is in the log, abort again on every restart (a crash loop on every node).
fn rust_abi(h: &Handler, errors: &mut Errors) {
    if let Some(abi) = &h.func.sig.abi {
        let is_rust = abi.name.as_ref().is_some_and(|n| n.value() == "Rust");
        if !is_rust {
            errors.push(syn::Error::new_spanned(
                abi,
                "a handler cannot have a foreign ABI: a panic could not unwind out of it, so the node would abort \
                 instead of returning `ApplyError::Panicked`, and abort again on every restart while replaying the entry; \
                 remove the `extern`",
            ));
        }
    }
}

fn not_const_unsafe_variadic(h: &Handler, errors: &mut Errors) {
    let sig = &h.func.sig;
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            c,
            "a handler cannot be a `const fn`: remove `const`",
        ));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "a handler cannot be an `unsafe fn`: the runtime calls it with no way to uphold its safety contract; \
             use `unsafe` blocks inside it instead",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(v, "a handler cannot be variadic"));
    }
}

/// Lifetime parameters and `where` clauses are fine (the handler is called,
/// never named by type); type and const parameters are not.
fn no_type_generics(h: &Handler, errors: &mut Errors) {
    for p in &h.func.sig.generics.params {
        if !matches!(p, GenericParam::Lifetime(_)) {
            errors.push(syn::Error::new_spanned(
                p,
                "a handler cannot be generic over types: the registry needs one concrete message and state type per handler",
            ));
        }
    }
}

fn no_receiver(h: &Handler, errors: &mut Errors) {
    if let Some(r) = &h.receiver {
        errors.push(syn::Error::new_spanned(
            r,
            "a handler is a free function: it cannot take `self`; take the message as the first parameter",
        ));
    }
}

/// A handler with no typed parameter has no message. (One whose first
/// parameter is a reference is checked by the types: see
/// [`reference_first`].)
fn has_message(h: &Handler, errors: &mut Errors) {
    if h.msg.is_none() && h.receiver.is_none() {
        errors.push(syn::Error::new(
            h.func.sig.paren_token.span.join(),
            "a handler takes its message as the first parameter, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`",
        ));
    }
}

/// Whether the handler's first parameter is a reference: the message is
/// taken by value, so it is either a message taken by reference, or the
/// message is later or missing. Which one is decided by the types (see
/// `expand::handler::reference_first`), not by the names of the types.
pub fn reference_first(h: &Handler) -> bool {
    h.msg
        .as_ref()
        .is_some_and(|m| matches!(strip(&m.ty), Type::Reference(_)))
}

fn sync_when_stateful(h: &Handler, errors: &mut Errors) {
    let Some(a) = &h.func.sig.asyncness else {
        return;
    };
    match h.shape {
        Shape::Command => errors.push(syn::Error::new_spanned(
            a,
            "a command handler cannot be `async`: it runs inside the replicated state machine, on every node, \
             in log order, so it must be a plain deterministic function; do I/O in an `async` #[event] handler",
        )),
        Shape::Query => errors.push(syn::Error::new_spanned(
            a,
            "a query handler that reads state cannot be `async`: it runs while the state is locked; \
             only a handler without state may be `async`",
        )),
        _ => {}
    }
}

fn owned_output(h: &Handler, errors: &mut Errors) {
    if let Type::ImplTrait(it) = strip(&h.output) {
        errors.push(syn::Error::new_spanned(
            it,
            "a handler must name its return type; `impl Trait` cannot be sent back to a caller",
        ));
    } else if let Some(borrow) = find_borrow(&h.output) {
        errors.push(syn::Error::new_spanned(
            borrow,
            "a handler returns an owned value (clone what you read from the state): a borrowed result cannot outlive \
             the handler's access to the state; only `'static` data may be borrowed",
        ));
    }
}

/// The first reference or lifetime in `ty` that is not `'static`.
pub fn find_borrow(ty: &Type) -> Option<proc_macro2::TokenStream> {
    struct Finder(Option<proc_macro2::TokenStream>);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_reference(&mut self, r: &'a syn::TypeReference) {
            if self.0.is_none() {
                match &r.lifetime {
                    Some(l) if l.ident == "static" => {}
                    Some(l) => self.0 = Some(l.to_token_stream()),
                    None => self.0 = Some(r.to_token_stream()),
                }
            }
            syn::visit::visit_type_reference(self, r);
        }
        fn visit_lifetime(&mut self, l: &'a syn::Lifetime) {
            if self.0.is_none() && l.ident != "static" {
                self.0 = Some(l.to_token_stream());
            }
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// `tokens` as a user would write them (`&mut Shop`, not `& mut Shop`).
pub fn pretty(tokens: &impl ToTokens) -> String {
    let mut s = tokens.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" : ", ": "),
        ("& ", "&"),
        (" < ", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
    ] {
        s = s.replace(from, to);
    }
    s
}
