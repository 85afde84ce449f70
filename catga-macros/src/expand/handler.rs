//! `#[handler]`: a trait impl (commands and queries) or nothing (events),
//! fn pointers into generic runtime functions, and a registry entry.
//!
//! Where the generated items go decides what a `#[handler]` written on a
//! method (in an `impl` or `trait` block, which the macro cannot see) costs:
//! one error, with no file read. For a command or query, everything sits
//! inside the `impl Handled for Msg` it needs anyway: rustc refuses an
//! `impl` inside an `impl` block with one error ("implementation is not
//! supported in `trait`s or `impl`s ... move it out to a nearby module
//! scope") and drops it. An event handler needs no impl: its items go
//! inside its own body, where the one reference to it by name does not
//! resolve in an `impl` block.
//!
//! What each parameter IS comes from its type: `CommandParam`, `QueryParam`
//! and `EventParam` (with `on_unimplemented` texts) take it from the
//! runtime; so does which one is the message (a message type implements them
//! too, as `Slot::Message`), when the first parameter is a reference or a
//! context: no type is recognised by its name. The message's kind is checked against the handler's shape in a
//! `const` (`check_kind`), whose panic names what the message is and what
//! its handler may take. Each bound on a user's type is required at exactly
//! one place, spanned on that type; every other use goes through a probe
//! that falls back silently (see `catga::__private`).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{GenericParam, Ident, ItemFn, Lifetime, Type};

use super::{assert_on, relifetime, span_range};
use crate::ast::{Handler, Shape, strip};
use crate::attr::Args;
use crate::valid::{mentions_lifetime, pretty};

struct Cx<'a> {
    k: TokenStream,
    h: &'a Handler,
    msg: Type,
    lifetimes: Vec<Lifetime>,
}

impl Cx<'_> {
    /// A parameter type as named in generated code, outside the handler
    /// (its own lifetimes inferred, so that rustc prints the type as
    /// written).
    fn named(&self, ty: &Type) -> Type {
        relifetime(ty, &self.lifetimes, "'_", false)
    }
}

/// Which of the runtime's parameter traits a handler's parameters are
/// checked against (from the handler's shape).
#[derive(Clone, Copy)]
enum ParamTrait {
    Command,
    Query,
    Event,
}

impl ParamTrait {
    /// The trait, as `<crate>::__private::X<'_>` (the first two are generic
    /// over the lifetime of what they borrow).
    fn path(self, k: &TokenStream) -> TokenStream {
        match self {
            ParamTrait::Command => quote!(#k::__private::CommandParam<'_>),
            ParamTrait::Query => quote!(#k::__private::QueryParam<'_>),
            ParamTrait::Event => quote!(#k::__private::EventParam),
        }
    }

    /// The trait with its `REPORTED` parameter (`CommandParam` and
    /// `QueryParam` only).
    fn path_reported(self, k: &TokenStream, reported: TokenStream) -> TokenStream {
        match self {
            ParamTrait::Command => quote!(#k::__private::CommandParam<'_, #reported>),
            ParamTrait::Query => quote!(#k::__private::QueryParam<'_, #reported>),
            ParamTrait::Event => quote!(#k::__private::EventParam),
        }
    }

    /// The probe's constant that reads the trait's `SLOT` (silent when the
    /// trait is not implemented: the assertion reports it).
    fn slot(self) -> Ident {
        let name = match self {
            ParamTrait::Command => "COMMAND_SLOT",
            ParamTrait::Query => "QUERY_SLOT",
            ParamTrait::Event => "EVENT_SLOT",
        };
        Ident::new(name, Span::call_site())
    }
}

impl Shape {
    /// The runtime's `Shape` variant of the same name.
    fn variant(self) -> Ident {
        let name = match self {
            Shape::Command => "Command",
            Shape::Query => "Query",
            Shape::StatelessQuery => "StatelessQuery",
            Shape::Event => "Event",
            Shape::EventReturning => "EventReturning",
        };
        Ident::new(name, Span::call_site())
    }

    fn params(self) -> ParamTrait {
        match self {
            Shape::Command => ParamTrait::Command,
            Shape::Query | Shape::StatelessQuery => ParamTrait::Query,
            Shape::Event | Shape::EventReturning => ParamTrait::Event,
        }
    }
}

pub fn expand(args: &Args, h: &Handler) -> TokenStream {
    let msg = h
        .msg
        .as_ref()
        .expect("checked by valid")
        .ty
        .as_ref()
        .clone();
    let lifetimes = lifetimes(h);
    let cx = Cx {
        k: args.krate(),
        h,
        msg,
        lifetimes,
    };
    let k = &cx.k;
    let f = &h.func;
    let imports = quote! {
        #[allow(unused_imports)]
        use #k::__private::{AnswerFallback as _, OutputFallback as _, ParamFallback as _, ProbeFallback as _, StateProbeFallback as _, TakeFallback as _};
    };
    let (checks, slots) = param_checks(&cx);
    let check_kind = check_kind(&cx, &slots);
    let (more_checks, items, route) = match h.shape {
        Shape::Command => command(&cx, &slots),
        Shape::Query => query(&cx, &slots),
        Shape::StatelessQuery => stateless_query(&cx),
        Shape::Event | Shape::EventReturning => {
            (message_first(&cx, &slots), event(&cx), TokenStream::new())
        }
    };
    // The checks go first in the handler's body (they name nothing of the
    // handler's, and rustc reports a failed one as in `place_order::_`).
    let checks = quote! {
        const _: () = {
            #imports
            #checks
            #check_kind
            #more_checks
        };
    };
    if route.is_empty() {
        // An event handler: its registration goes in its body too.
        return with_items(f, quote!(#checks const _: () = { #imports #items };));
    }
    let f = with_items(f, checks);
    let handled = impl_handled(
        &cx,
        quote! {{
            #imports
            #items
            #route
        }},
    );
    quote! {
        #f
        #handled
    }
}

/// The handler's own lifetime parameters.
fn lifetimes(h: &Handler) -> Vec<Lifetime> {
    h.func
        .sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Lifetime(l) => Some(l.lifetime.clone()),
            _ => None,
        })
        .collect()
}

/// `func` with `items` first in its body.
fn with_items(func: &ItemFn, items: TokenStream) -> TokenStream {
    let mut func = func.clone();
    func.block
        .stmts
        .insert(0, syn::Stmt::Item(syn::Item::Verbatim(items)));
    func.into_token_stream()
}

/// A handler refused at expansion: the function as written (without a
/// foreign ABI, refused, so that rustc adds no warning about it), and
/// impls that stand in for the expansion. A method (`self`) gets none: it
/// sits in an `impl` block, where an `impl` is one more error.
pub fn refused(args: &Args, h: &Handler) -> TokenStream {
    let mut func = h.func.clone();
    func.sig.abi = None;
    refused_with(args, h, func.into_token_stream())
}

/// A handler whose first parameter is a reference (`&mut Shop`, `&Cmd`):
/// refused, with checks in its body that say, by the types, where its
/// message is (see [`reference_first_checks`]).
pub fn reference_first(args: &Args, h: &Handler) -> TokenStream {
    let func = with_items(&h.func, reference_first_checks(args, h));
    refused_with(args, h, func)
}

fn refused_with(args: &Args, h: &Handler, func: TokenStream) -> TokenStream {
    let stubs = if h.receiver.is_some() {
        TokenStream::new()
    } else {
        stubs(args, h)
    };
    quote!(#func #stubs)
}

/// With errors: impls that stand in for the expansion, so that a message
/// whose handler was refused can still be sent without a second error.
fn stubs(args: &Args, h: &Handler) -> TokenStream {
    let Some(msg) = &h.msg else {
        return TokenStream::new();
    };
    if matches!(*msg.ty, Type::Reference(_))
        || !matches!(
            h.shape,
            Shape::Command | Shape::Query | Shape::StatelessQuery
        )
    {
        return TokenStream::new();
    }
    let k = args.krate();
    let msg = &msg.ty;
    let generics: Vec<Ident> = h
        .func
        .sig
        .generics
        .params
        .iter()
        .map(|p| match p {
            GenericParam::Type(t) => t.ident.clone(),
            GenericParam::Const(c) => c.ident.clone(),
            GenericParam::Lifetime(l) => l.lifetime.ident.clone(),
        })
        .collect();
    let mentions_generic = |ty: &Type| mentions_any(ty, &generics);
    let output = if mentions_generic(&h.output)
        || crate::valid::find_borrow(&h.output).is_some()
        || matches!(h.output, Type::ImplTrait(_))
        || mentions_lifetime(msg)
    {
        quote!(())
    } else {
        let o = &h.output;
        quote!(#o)
    };
    if mentions_generic(msg) {
        return TokenStream::new();
    }
    quote! {
        impl #k::__private::Handled for #msg {
            type Output = #output;
            const ROUTE: #k::__private::Route<Self, #output> =
                #k::__private::Route::StatelessQuery {
                    run: #k::__private::refused_run::<Self, #output>,
                    remote: #k::__private::Remote {
                        routing: #k::__private::Routing::Local,
                        decode: #k::__private::refused_decode::<#output>,
                    },
                };
        }
    }
}

/// Whether `ty` names one of `names` (a type, const or lifetime parameter).
fn mentions_any(ty: &Type, names: &[Ident]) -> bool {
    struct Finder<'n> {
        names: &'n [Ident],
        found: bool,
    }
    impl<'a> syn::visit::Visit<'a> for Finder<'_> {
        fn visit_ident(&mut self, i: &'a Ident) {
            self.found |= self.names.contains(i);
        }
    }
    let mut f = Finder {
        names,
        found: false,
    };
    syn::visit::Visit::visit_type(&mut f, ty);
    f.found
}

/// An example signature for the texts below.
const EXAMPLE: &str = "e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`";

/// For an event handler, whose first parameter is asserted to be a
/// `FirstParam` (a message, or a context written before it): when it is a
/// context, one error that says where the message goes, decided by the
/// types (a parameter after it that is a message has `Slot::Message`).
fn message_first(cx: &Cx, slots: &[TokenStream]) -> TokenStream {
    let k = &cx.k;
    let Some(first) = &cx.h.msg else {
        return TokenStream::new();
    };
    let msg = &cx.msg;
    let first_slot = quote!(#k::__private::Param::<#msg>::FIRST_SLOT);
    let missing = format!(
        "a handler's first parameter is the message it handles, by value: add it before `{}`, e.g. `fn on_order_placed(event: OrderPlaced, ctx: EventContext)`",
        pretty(first)
    );
    let mut out = TokenStream::new();
    let check = spanned_call(
        &first.ty,
        quote!(#k::__private::check_message_first),
        quote!(#first_slot, &[#(#slots),*], #missing),
    );
    out.extend(quote!(const _: () = #check;));
    for (p, slot) in cx.h.params.iter().zip(slots) {
        let why = format!(
            "a handler takes its message first: move `{}` to the front, e.g. `fn on_order_placed(event: OrderPlaced, ctx: EventContext)`",
            pretty(p)
        );
        let check = spanned_call(
            &p.ty,
            quote!(#k::__private::check_moved_message),
            quote!(#first_slot, #slot, #why),
        );
        out.extend(quote!(const _: () = #check;));
    }
    out
}

/// The checks of a handler whose first parameter is a reference: on it,
/// "take the message by value" when it borrows a message, "add the message
/// before it" when no parameter is one; on a later parameter that is the
/// message, "move it to the front". Decided by the types (`Probe::KIND`).
fn reference_first_checks(args: &Args, h: &Handler) -> TokenStream {
    let k = args.krate();
    let Some(first) = &h.msg else {
        return TokenStream::new();
    };
    let Type::Reference(r) = strip(&first.ty) else {
        return TokenStream::new();
    };
    let lifetimes = lifetimes(h);
    let named = |ty: &Type| relifetime(ty, &lifetimes, "'_", false);
    let referent = named(&r.elem);
    let referent_kind = quote!(#k::__private::Probe::<#referent>::KIND);
    let by_value: Vec<&syn::PatType> = h
        .params
        .iter()
        .filter(|p| !matches!(strip(&p.ty), Type::Reference(_)))
        .collect();
    let kinds: Vec<TokenStream> = by_value
        .iter()
        .map(|p| {
            let ty = named(&p.ty);
            quote!(#k::__private::Probe::<#ty>::KIND)
        })
        .collect();
    let by_value_why = format!(
        "take the message by value, e.g. `cmd: PlaceOrder`, not by reference: write `{}`",
        pretty(&r.elem)
    );
    let missing = format!(
        "a handler's first parameter is the message it handles, by value: add it before `{}`, {EXAMPLE}",
        pretty(first)
    );
    let mut out = TokenStream::new();
    let check = spanned_call(
        &first.ty,
        quote!(#k::__private::check_ref_first),
        quote!(#referent_kind, &[#(#kinds),*], #by_value_why, #missing),
    );
    out.extend(quote!(const _: () = #check;));
    for (p, kind) in by_value.iter().zip(&kinds) {
        let why = format!(
            "a handler takes its message first: move `{}` to the front, {EXAMPLE}",
            pretty(*p)
        );
        let check = spanned_call(
            &p.ty,
            quote!(#k::__private::check_message_after_ref),
            quote!(#referent_kind, #kind, #why),
        );
        out.extend(quote!(const _: () = #check;));
    }
    quote! {
        const _: () = {
            #[allow(unused_imports)]
            use #k::__private::ProbeFallback as _;
            #out
        };
    }
}

/// `check_kind(Probe::<Msg>::KIND, Shape::X, slots)`, reported on the
/// message type.
fn check_kind(cx: &Cx, slots: &[TokenStream]) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let shape = cx.h.shape.variant();
    let call = spanned_call(
        msg,
        quote!(#k::__private::check_kind),
        quote!(#k::__private::Probe::<#msg>::KIND, #k::__private::Shape::#shape, &[#(#slots),*]),
    );
    quote!(const _: () = #call;)
}

/// `path(args)`, with the callee spanned on the first token of `on` and the
/// argument list on its last, so that rustc reports it on the whole of `on`.
fn spanned_call(on: &impl quote::ToTokens, path: TokenStream, args: TokenStream) -> TokenStream {
    let (first, last) = span_range(on);
    let callee = respan(path, first);
    let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, args);
    group.set_span(last);
    quote!(#callee #group)
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            t.set_span(span);
            t
        })
        .collect()
}

/// The per-parameter assertions: each parameter's type is one of the
/// parameter trait's (one error, on the type), it fits the message's kind,
/// and it is not a second state or context. Returns the checks and each
/// parameter's `Slot`.
fn param_checks(cx: &Cx) -> (TokenStream, Vec<TokenStream>) {
    let k = &cx.k;
    let msg = &cx.msg;
    let params = cx.h.shape.params();
    let tr = params.path(k);
    let slot = params.slot();
    let mut out = TokenStream::new();
    let mut slots: Vec<TokenStream> = Vec::new();
    for p in &cx.h.params {
        let ty = cx.named(&p.ty);
        let (first, last) = span_range(&p.ty);
        let open = quote_spanned!(first=> <);
        let (tr, this) = match params {
            // `EventParam<true>` when the type is a message (see there)
            ParamTrait::Event => {
                let kind = quote!(#k::__private::Probe::<#ty>::KIND);
                (
                    quote!(#k::__private::EventParam<{ #kind.is_some() }>),
                    quote!(#k::__private::event_slot(#kind, #k::__private::Param::<#ty>::#slot)),
                )
            }
            // `CommandParam<'_, true>` for a borrowed `#[state]` type that
            // is not a `State`: reported on the state (see there)
            ParamTrait::Command | ParamTrait::Query => {
                let tr = match strip(&ty) {
                    Type::Reference(r) => {
                        let s = &r.elem;
                        let reported = quote! {{
                            #k::__private::StateProbe::<#s>::DECLARED
                                && !#k::__private::StateProbe::<#s>::STATE
                        }};
                        params.path_reported(k, reported)
                    }
                    _ => tr.clone(),
                };
                (tr, quote!(#k::__private::Param::<#ty>::#slot))
            }
        };
        let rest = quote_spanned!(last=> as #tr>::SLOT);
        out.extend(quote!(const _: #k::__private::Slot = #open #ty #rest;));
        let check = spanned_call(
            &p.ty,
            quote!(#k::__private::check_param),
            quote!(#k::__private::Probe::<#msg>::KIND, &[#(#slots),*], #this),
        );
        out.extend(quote!(const _: () = #check;));
        slots.push(this);
    }
    (out, slots)
}

fn handler_path(cx: &Cx) -> TokenStream {
    let name = cx.h.func.sig.ident.to_string();
    quote!(::core::concat!(::core::module_path!(), "::", #name))
}

/// The check that a command handler takes a state (reported, when it does
/// not, on its parameter list), and the state's operations.
fn state_const(cx: &Cx, slots: &[TokenStream]) -> (TokenStream, TokenStream) {
    let k = &cx.k;
    let msg = &cx.msg;
    let inputs = &cx.h.func.sig.inputs;
    let check = spanned_call(
        inputs,
        quote!(#k::__private::check_has_state),
        quote!(#k::__private::Probe::<#msg>::KIND, &[#(#slots),*]),
    );
    (
        quote!(const _: () = #check;),
        quote!(const __CATGA_STATE: fn() -> #k::__private::StateInfo = #k::__private::state_of(&[#(#slots),*]);),
    )
}

/// `impl Handled for Msg { type Output = ..; const ROUTE = <route>; }`:
/// `route` is a block that holds every other generated item.
fn impl_handled(cx: &Cx, route: TokenStream) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let (first, _) = span_range(msg);
    // The whole impl (its braces too) is spanned on the message type, so that
    // a second handler for it ("conflicting implementations") is reported there.
    let head = respan(quote!(impl #k::__private::Handled for), first);
    let items = quote! {
        type Output = #out;
        const ROUTE: #k::__private::Route<Self, #out> = #route;
    };
    let mut body = proc_macro2::Group::new(proc_macro2::Delimiter::Brace, items);
    body.set_span(first);
    // `Handled: Message: Send`. A message with a field that is not `Send` is
    // reported on that field (`WireField`); the higher-ranked bound defers
    // `Send` to where the message is sent, as the message's own impls do,
    // so that its handler is not one more error.
    let send = quote!(where for<'__catga> #msg: ::core::marker::Send);
    quote!(#head #msg #send #body)
}

/// The checks and items of a command handler, and its route.
fn command(cx: &Cx, slots: &[TokenStream]) -> (TokenStream, TokenStream, TokenStream) {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let (state_check, state) = state_const(cx, slots);
    let out_check = assert_on(out, quote!(#k::__private::CommandOutput), quote!(ASSERT));
    let checks = quote! {
        #state_check
        const _: () = #out_check;
    };
    let args = cx.h.params.iter().map(|p| {
        let ty = cx.named(&p.ty);
        quote! {
            match #k::__private::Param::<#ty>::command(&env) {
                ::core::option::Option::Some(p) => p,
                ::core::option::Option::None => return ::core::result::Result::Err(
                    #k::__private::missing_param(#k::__private::Probe::<#msg>::NAME)),
            }
        }
    });
    let path = handler_path(cx);
    let items = quote! {
        #state
        const __CATGA_OUTPUT: #k::__private::OutputCodec<#out> = #k::__private::Output::<#out>::CODEC;
        fn __catga_apply(
            payload: &[u8],
            state: &mut (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
            ctx: &mut #k::__private::CommandContext,
        ) -> ::core::result::Result<::std::vec::Vec<u8>, #k::__private::ApplyError> {
            let msg: #msg = #k::__private::Probe::<#msg>::decode(payload)?;
            let env = #k::__private::CommandEnv::new(state, ctx);
            let out = #fn_name(msg #(, #args)*);
            (__CATGA_OUTPUT.encode)(&out)
        }
        #k::__private::inventory::submit! {
            #k::__private::CommandHandlerEntry {
                name: #k::__private::Probe::<#msg>::NAME,
                handler: #path,
                state: __CATGA_STATE,
                apply: __catga_apply,
            }
        }
    };
    let route = quote!(#k::__private::Route::Command { decode: __CATGA_OUTPUT.decode });
    (checks, items, route)
}

/// The checks and items of a query handler that reads state, and its route.
fn query(cx: &Cx, slots: &[TokenStream]) -> (TokenStream, TokenStream, TokenStream) {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let (state_check, state) = state_const(cx, slots);
    let args = cx.h.params.iter().map(|p| {
        let ty = cx.named(&p.ty);
        quote!(#k::__private::Param::<#ty>::query(state)?)
    });
    let path = handler_path(cx);
    let (routable, answer) = answer(cx);
    let checks = quote!(#state_check #routable);
    let items = quote! {
        #state
        #answer
        fn __catga_run(
            msg: #msg,
            state: &(dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
        ) -> ::core::option::Option<#out> {
            ::core::option::Option::Some(#fn_name(msg #(, #args)*))
        }
        fn __catga_remote(
            payload: &[u8],
            state: &(dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
        ) -> ::core::result::Result<::std::vec::Vec<u8>, #k::__private::ApplyError> {
            let msg: #msg = #k::__private::Probe::<#msg>::decode(payload)?;
            match __catga_run(msg, state) {
                ::core::option::Option::Some(out) => (__CATGA_ANSWER.encode)(&out),
                ::core::option::Option::None => ::core::result::Result::Err(
                    #k::__private::missing_param(#k::__private::Probe::<#msg>::NAME)),
            }
        }
        #k::__private::inventory::submit! {
            #k::__private::QueryHandlerEntry {
                name: #k::__private::Probe::<#msg>::NAME,
                handler: #path,
                state: ::core::option::Option::Some(__CATGA_STATE),
                run: #k::__private::QueryRunner::Stateful(__catga_remote),
            }
        }
    };
    let route = quote! {
        #k::__private::Route::Query {
            consistency: #k::__private::Probe::<#msg>::CONSISTENCY,
            state: __CATGA_STATE,
            run: __catga_run,
            remote: #k::__private::Remote {
                routing: #k::__private::Probe::<#msg>::ROUTING,
                decode: __CATGA_ANSWER.decode,
            },
        }
    };
    (checks, items, route)
}

/// The checks and items of a query handler without state, and its route.
fn stateless_query(cx: &Cx) -> (TokenStream, TokenStream, TokenStream) {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let call = if cx.h.func.sig.asyncness.is_some() {
        quote_spanned!(fn_name.span()=> ::std::boxed::Box::pin(#fn_name(msg)))
    } else {
        quote!(::std::boxed::Box::pin(::core::future::ready(#fn_name(msg))))
    };
    let path = handler_path(cx);
    let (routable, answer) = answer(cx);
    let items = quote! {
        #answer
        fn __catga_run(msg: #msg) -> #k::__private::BoxFuture<'static, #out> { #call }
        fn __catga_remote(
            payload: &[u8],
        ) -> ::core::result::Result<
            #k::__private::BoxFuture<'static, ::core::result::Result<::std::vec::Vec<u8>, #k::__private::ApplyError>>,
            #k::__private::ApplyError,
        > {
            let msg: #msg = #k::__private::Probe::<#msg>::decode(payload)?;
            let fut = __catga_run(msg);
            ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                let out = fut.await;
                (__CATGA_ANSWER.encode)(&out)
            }))
        }
        #k::__private::inventory::submit! {
            #k::__private::QueryHandlerEntry {
                name: #k::__private::Probe::<#msg>::NAME,
                handler: #path,
                state: ::core::option::Option::None,
                run: #k::__private::QueryRunner::Stateless(__catga_remote),
            }
        }
    };
    let route = quote! {
        #k::__private::Route::StatelessQuery {
            run: __catga_run,
            remote: #k::__private::Remote {
                routing: #k::__private::Probe::<#msg>::ROUTING,
                decode: __CATGA_ANSWER.decode,
            },
        }
    };
    (routable, items, route)
}

/// The check (reported on the return type) that a routed query's answer
/// can be encoded, and the codec of the answer across nodes.
fn answer(cx: &Cx) -> (TokenStream, TokenStream) {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    // An answer that borrows (`&'static str`, `Cow<'static, _>`) cannot be
    // decoded on another node, and probing it for `DeserializeOwned` is a
    // region error rather than a fallback: it stays local, by its lifetime.
    let codec = if mentions_lifetime(out) {
        quote!(#k::__private::local_answer::<#out>())
    } else {
        quote!(#k::__private::Answer::<#out>::CODEC)
    };
    let check = spanned_call(
        out,
        quote!(#k::__private::check_routable),
        quote!(#k::__private::Probe::<#msg>::ROUTING.is_remote(), #codec.remote),
    );
    (
        quote!(const _: () = #check;),
        quote!(const __CATGA_ANSWER: #k::__private::AnswerCodec<#out> = #codec;),
    )
}

/// The items of an event handler (they go inside its body).
fn event(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let fn_name = &cx.h.func.sig.ident;
    // The one place where an event handler's first parameter is required
    // to be a message (`FirstParam`: a message, or a context written before
    // it, which `message_first` reports): in a fn never called, whose
    // higher-ranked bound defers `Send` (as the message's own impls do: a
    // field that is not `Send` is reported on the field, not again here).
    let is_message = assert_on(msg, quote!(#k::__private::FirstParam), quote!(SLOT));
    let names: Vec<syn::Ident> = (0..cx.h.params.len())
        .map(|i| syn::Ident::new(&format!("__catga_arg{i}"), Span::call_site()))
        .collect();
    let takes = cx.h.params.iter().zip(&names).map(|(p, n)| {
        let ty = cx.named(&p.ty);
        quote! {
            let #n: #ty = match #k::__private::Param::<#ty>::event(&env) {
                ::core::option::Option::Some(p) => p,
                ::core::option::Option::None => return ::core::result::Result::Err(
                    #k::__private::missing_param(__CATGA_NAME)),
            };
        }
    });
    let returns = cx.h.shape == Shape::EventReturning;
    let call = match (cx.h.func.sig.asyncness.is_some(), returns) {
        (true, false) => {
            quote_spanned!(fn_name.span()=> ::std::boxed::Box::pin(#fn_name(msg #(, #names)*)))
        }
        (true, true) => quote! {{
            let fut = #fn_name(msg #(, #names)*);
            ::std::boxed::Box::pin(async move { let _ = fut.await; })
        }},
        (false, _) => quote! {{
            let _ = #fn_name(msg #(, #names)*);
            ::std::boxed::Box::pin(::core::future::ready(()))
        }},
    };
    let path = handler_path(cx);
    quote! {
        #[allow(dead_code)]
        fn __catga_is_message() -> #k::__private::Slot
        where
            for<'__catga> #msg: ::core::marker::Send,
        {
            #is_message
        }
        const __CATGA_NAME: &str = #k::__private::Probe::<#msg>::NAME;
        fn __catga_on_event(
            payload: &[u8],
            ctx: #k::__private::EventContext,
        ) -> ::core::result::Result<#k::__private::BoxFuture<'static, ()>, #k::__private::ApplyError> {
            let msg: #msg = #k::__private::Probe::<#msg>::decode(payload)?;
            let env = ::core::cell::Cell::new(::core::option::Option::Some(ctx));
            let _ = &env;
            #(#takes)*
            ::core::result::Result::Ok(#call)
        }
        #k::__private::inventory::submit! {
            #k::__private::EventHandlerEntry {
                name: __CATGA_NAME,
                handler: #path,
                call: __catga_on_event,
            }
        }
    }
}
