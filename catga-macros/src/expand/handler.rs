//! `#[handler]`: a trait impl (commands and queries) or nothing (events),
//! fn pointers into generic runtime functions, and a registry entry.
//!
//! What each parameter IS comes from its type: `CommandParam`, `QueryParam`
//! and `EventParam` (with `on_unimplemented` texts) take it from the
//! runtime. The message's kind is checked against the handler's shape in a
//! `const` (`check_kind`), whose panic names what the message is and what
//! its handler may take. Each bound on a user's type is required at exactly
//! one place, spanned on that type; every other use goes through a probe
//! that falls back silently (see `catga::__private`).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{GenericParam, Lifetime, Type};

use super::{assert_on, relifetime, span_range};
use crate::ast::{Handler, Shape};
use crate::attr::Args;

struct Cx<'a> {
    k: TokenStream,
    h: &'a Handler,
    msg: Type,
    lifetimes: Vec<Lifetime>,
}

impl Cx<'_> {
    /// A parameter type as named in a `const` (lifetimes inferred, so that
    /// rustc prints the type as written).
    fn in_const(&self, ty: &Type) -> Type {
        relifetime(ty, &self.lifetimes, "'_", false)
    }
    /// A parameter type as named in a fn body (lifetimes inferred).
    fn in_body(&self, ty: &Type) -> Type {
        relifetime(ty, &self.lifetimes, "'_", false)
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
    let lifetimes = h
        .func
        .sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Lifetime(l) => Some(l.lifetime.clone()),
            _ => None,
        })
        .collect();
    let cx = Cx {
        k: args.krate(),
        h,
        msg,
        lifetimes,
    };
    let k = &cx.k;
    let f = &h.func;
    let body = match h.shape {
        Shape::Command => command(&cx),
        Shape::Query => query(&cx),
        Shape::StatelessQuery => stateless_query(&cx),
        Shape::Event | Shape::EventReturning => event(&cx),
    };
    let check_kind = check_kind(&cx);
    quote! {
        #f
        #[doc(hidden)]
        const _: () = {
            #[allow(unused_imports)]
            use #k::__private::{AnswerFallback as _, OutputFallback as _, ParamFallback as _, ProbeFallback as _, TakeFallback as _};
            #check_kind
            #body
        };
    }
}

/// With errors: impls that stand in for the expansion, so that a message
/// whose handler was refused can still be sent without a second error.
pub fn stubs(args: &Args, h: &Handler) -> TokenStream {
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
    let generics: Vec<String> = h
        .func
        .sig
        .generics
        .params
        .iter()
        .map(|p| match p {
            GenericParam::Type(t) => t.ident.to_string(),
            GenericParam::Const(c) => c.ident.to_string(),
            GenericParam::Lifetime(l) => l.lifetime.ident.to_string(),
        })
        .collect();
    let mentions_generic = |ty: &Type| {
        let mut found = false;
        for tt in quote!(#ty) {
            walk(tt, &mut |id| found |= generics.iter().any(|g| g == id));
        }
        found
    };
    let output = if mentions_generic(&h.output)
        || crate::valid::find_borrow(&h.output).is_some()
        || matches!(h.output, Type::ImplTrait(_))
        || quote!(#msg).to_string().contains('\'')
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
        const _: () = {
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
        };
    }
}

fn walk(tt: proc_macro2::TokenTree, f: &mut impl FnMut(&str)) {
    match tt {
        proc_macro2::TokenTree::Ident(i) => f(&i.to_string()),
        proc_macro2::TokenTree::Group(g) => {
            for t in g.stream() {
                walk(t, f);
            }
        }
        _ => {}
    }
}

/// `check_kind(Probe::<Msg>::KIND, Shape::X)`, reported on the message type.
fn check_kind(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let shape = syn::Ident::new(
        match cx.h.shape {
            Shape::Command => "Command",
            Shape::Query => "Query",
            Shape::StatelessQuery => "StatelessQuery",
            Shape::Event => "Event",
            Shape::EventReturning => "EventReturning",
        },
        Span::call_site(),
    );
    let call = spanned_call(
        msg,
        quote!(#k::__private::check_kind),
        quote!(#k::__private::Probe::<#msg>::KIND, #k::__private::Shape::#shape),
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

/// The per-parameter assertions: each parameter's type is a `trait_name`
/// (one error, on the type), and it is not a second state or context.
fn param_checks(cx: &Cx, trait_name: &str, slot: &str) -> (TokenStream, Vec<TokenStream>) {
    let k = &cx.k;
    let tr = syn::Ident::new(trait_name, Span::call_site());
    let slot = syn::Ident::new(slot, Span::call_site());
    let mut out = TokenStream::new();
    let mut slots: Vec<TokenStream> = Vec::new();
    for p in &cx.h.params {
        let ty = cx.in_const(&p.ty);
        let lt = (trait_name != "EventParam").then(|| quote!(<'_>));
        let (first, last) = span_range(&p.ty);
        let open = quote_spanned!(first=> <);
        let rest = quote_spanned!(last=> as #k::__private::#tr #lt>::SLOT);
        out.extend(quote!(const _: #k::__private::Slot = #open #ty #rest;));
        let this = quote!(#k::__private::Param::<#ty>::#slot);
        let check = spanned_call(
            &p.ty,
            quote!(#k::__private::check_param),
            quote!(&[#(#slots),*], #this),
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

/// The state of a command or query handler, reported (when missing) on its
/// parameter list.
fn state_const(cx: &Cx, slots: &[TokenStream]) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let inputs = &cx.h.func.sig.inputs;
    let check = spanned_call(
        inputs,
        quote!(#k::__private::check_has_state),
        quote!(#k::__private::Probe::<#msg>::KIND, &[#(#slots),*]),
    );
    quote! {
        const _: () = #check;
        const __CATGA_STATE: fn() -> #k::__private::StateInfo = #k::__private::state_of(&[#(#slots),*]);
    }
}

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
    quote!(#head #msg #body)
}

fn command(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let (checks, slots) = param_checks(cx, "CommandParam", "COMMAND_SLOT");
    let state = state_const(cx, &slots);
    let out_check = assert_on(out, quote!(#k::__private::CommandOutput), quote!(ASSERT));
    let args = cx.h.params.iter().map(|p| {
        let ty = cx.in_body(&p.ty);
        quote! {
            match #k::__private::Param::<#ty>::command(&env) {
                ::core::option::Option::Some(p) => p,
                ::core::option::Option::None => return ::core::result::Result::Err(
                    #k::__private::missing_param(#k::__private::name_of::<#msg>())),
            }
        }
    });
    let handled = impl_handled(
        cx,
        quote!(#k::__private::Route::Command { decode: __CATGA_OUTPUT.decode }),
    );
    let path = handler_path(cx);
    quote! {
        #checks
        #state
        const _: () = #out_check;
        const __CATGA_OUTPUT: #k::__private::OutputCodec<#out> = #k::__private::Output::<#out>::CODEC;
        #handled
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
                name: #k::__private::name_of::<#msg>(),
                handler: #path,
                state: __CATGA_STATE,
                apply: __catga_apply,
            }
        }
    }
}

fn query(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let (checks, slots) = param_checks(cx, "QueryParam", "QUERY_SLOT");
    let state = state_const(cx, &slots);
    let args = cx.h.params.iter().map(|p| {
        let ty = cx.in_body(&p.ty);
        quote!(#k::__private::Param::<#ty>::query(state)?)
    });
    let handled = impl_handled(
        cx,
        quote! {
            #k::__private::Route::Query {
                consistency: #k::__private::Probe::<#msg>::CONSISTENCY,
                state: __CATGA_STATE,
                run: __catga_run,
                remote: #k::__private::Remote {
                    routing: #k::__private::Probe::<#msg>::ROUTING,
                    decode: __CATGA_ANSWER.decode,
                },
            }
        },
    );
    let path = handler_path(cx);
    let answer = answer(cx);
    quote! {
        #checks
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
                    #k::__private::missing_param(#k::__private::name_of::<#msg>())),
            }
        }
        #handled
        #k::__private::inventory::submit! {
            #k::__private::QueryHandlerEntry {
                name: #k::__private::name_of::<#msg>(),
                handler: #path,
                state: ::core::option::Option::Some(__CATGA_STATE),
                run: #k::__private::QueryRunner::Stateful(__catga_remote),
            }
        }
    }
}

fn stateless_query(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let fn_name = &cx.h.func.sig.ident;
    let call = if cx.h.func.sig.asyncness.is_some() {
        quote_spanned!(fn_name.span()=> ::std::boxed::Box::pin(#fn_name(msg)))
    } else {
        quote!(::std::boxed::Box::pin(::core::future::ready(#fn_name(msg))))
    };
    let handled = impl_handled(
        cx,
        quote! {
            #k::__private::Route::StatelessQuery {
                run: __catga_run,
                remote: #k::__private::Remote {
                    routing: #k::__private::Probe::<#msg>::ROUTING,
                    decode: __CATGA_ANSWER.decode,
                },
            }
        },
    );
    let path = handler_path(cx);
    let answer = answer(cx);
    quote! {
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
        #handled
        #k::__private::inventory::submit! {
            #k::__private::QueryHandlerEntry {
                name: #k::__private::name_of::<#msg>(),
                handler: #path,
                state: ::core::option::Option::None,
                run: #k::__private::QueryRunner::Stateless(__catga_remote),
            }
        }
    }
}

/// The codec of a query's answer across nodes, and the check (reported on
/// the return type) that a routed query's answer can be encoded.
fn answer(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let out = &cx.h.output;
    let check = spanned_call(
        out,
        quote!(#k::__private::check_routable),
        quote!(#k::__private::Probe::<#msg>::ROUTING.is_remote(), __CATGA_ANSWER.remote),
    );
    // An answer that borrows (`&'static str`, `Cow<'static, _>`) cannot be
    // decoded on another node, and probing it for `DeserializeOwned` is a
    // region error rather than a fallback: it stays local, by its spelling.
    let codec = if quote!(#out).to_string().contains('\'') {
        quote!(#k::__private::local_answer::<#out>())
    } else {
        quote!(#k::__private::Answer::<#out>::CODEC)
    };
    quote! {
        const __CATGA_ANSWER: #k::__private::AnswerCodec<#out> = #codec;
        const _: () = #check;
    }
}

fn event(cx: &Cx) -> TokenStream {
    let k = &cx.k;
    let msg = &cx.msg;
    let fn_name = &cx.h.func.sig.ident;
    let (checks, _) = param_checks(cx, "EventParam", "EVENT_SLOT");
    // The one place where `Message` is required of an event handler's type.
    let name = assert_on(msg, quote!(#k::__private::Message), quote!(NAME));
    let names: Vec<syn::Ident> = (0..cx.h.params.len())
        .map(|i| syn::Ident::new(&format!("__catga_arg{i}"), Span::call_site()))
        .collect();
    let takes = cx.h.params.iter().zip(&names).map(|(p, n)| {
        let ty = cx.in_body(&p.ty);
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
        #checks
        const __CATGA_NAME: &str = #name;
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
