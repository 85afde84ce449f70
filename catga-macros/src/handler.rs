//! `#[handler]`: classify the function by its signature, check what can be
//! checked syntactically, and expand into a trait impl plus a registry entry.
//! Whether the message really is a command, query or event is left to the
//! type system (spanned bounds on the runtime's traits), so the error lands on
//! the user's type with the runtime's `on_unimplemented` text.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, ReturnType, Type, TypeReference};

use crate::args::{self, Allowed};
use crate::fallback;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => fallback::with_errors(item, e),
    }
}

/// What a parameter after the message is.
enum Param {
    /// `&mut S`
    StateMut(Type),
    /// `&S`
    StateRef(Type),
    /// `&mut CommandContext`
    CommandCtx,
    /// `EventContext` (by value)
    EventCtx,
}

/// The four handler shapes.
enum Shape {
    Command { state: Type },
    Query { state: Type },
    StatelessQuery,
    Event,
}

struct Parsed {
    msg: Type,
    params: Vec<Param>,
    shape: Shape,
    output: Type,
}

fn last_ident_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => {
            p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == name)
        }
        Type::Group(g) => last_ident_is(&g.elem, name),
        Type::Paren(p) => last_ident_is(&p.elem, name),
        _ => false,
    }
}

fn contains_reference(ty: &Type) -> Option<Span> {
    struct Finder(Option<Span>);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_reference(&mut self, r: &'a TypeReference) {
            if self.0.is_none() {
                self.0 = Some(r.and_token.span);
            }
        }
        fn visit_lifetime(&mut self, l: &'a syn::Lifetime) {
            if self.0.is_none() {
                self.0 = Some(l.span());
            }
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

fn parse(f: &ItemFn) -> syn::Result<Parsed> {
    let sig = &f.sig;
    let mut errors = Vec::new();
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic: the registry needs one concrete message and state type per handler",
        ));
    }
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            c,
            "a handler cannot be a `const fn`",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(v, "a handler cannot be variadic"));
    }
    let mut inputs = sig.inputs.iter();
    let msg = match inputs.next() {
        None => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a handler takes its message as the first parameter, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`",
            ));
        }
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                "a handler is a free function: it cannot take `self`; take the message as the first parameter",
            ));
        }
        Some(FnArg::Typed(pt)) => {
            if let Type::Reference(r) = &*pt.ty {
                errors.push(syn::Error::new_spanned(
                    r,
                    "take the message by value, e.g. `cmd: PlaceOrder`, not by reference",
                ));
            }
            (*pt.ty).clone()
        }
    };
    let mut params = Vec::new();
    let mut state_seen: Option<Span> = None;
    for arg in inputs {
        let pt = match arg {
            FnArg::Receiver(r) => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "a handler is a free function: it cannot take `self`",
                ));
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        if !matches!(&*pt.pat, Pat::Ident(_) | Pat::Wild(_)) {
            errors.push(syn::Error::new_spanned(
                &pt.pat,
                "use a plain name for handler parameters",
            ));
        }
        let p = match &*pt.ty {
            Type::Reference(r)
                if r.mutability.is_some() && last_ident_is(&r.elem, "CommandContext") =>
            {
                Param::CommandCtx
            }
            Type::Reference(r) if last_ident_is(&r.elem, "EventContext") => {
                errors.push(syn::Error::new_spanned(
                    r,
                    "take the event context by value: `ctx: EventContext`",
                ));
                continue;
            }
            ty if last_ident_is(ty, "EventContext") => Param::EventCtx,
            ty if last_ident_is(ty, "CommandContext") => {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "take the command context as `&mut CommandContext`",
                ));
                continue;
            }
            Type::Reference(r) => {
                if let Some(prev) = state_seen {
                    let what = if r.mutability.is_some() {
                        "`&mut`"
                    } else {
                        "`&`"
                    };
                    let mut e = syn::Error::new_spanned(
                        r,
                        format!(
                            "a handler takes at most one state parameter, and this is a second {what} parameter; \
                             keep related data in one state type"
                        ),
                    );
                    e.combine(syn::Error::new(prev, "the first state parameter is here"));
                    errors.push(e);
                    continue;
                }
                state_seen = Some(r.span());
                if r.mutability.is_some() {
                    Param::StateMut((*r.elem).clone())
                } else {
                    Param::StateRef((*r.elem).clone())
                }
            }
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "unexpected handler parameter: after the message a handler takes `&mut State` and \
                     `&mut CommandContext` (command), `&State` (query), or `EventContext` (event)",
                ));
                continue;
            }
        };
        if params
            .iter()
            .any(|q| std::mem::discriminant(q) == std::mem::discriminant(&p))
            && matches!(p, Param::CommandCtx | Param::EventCtx)
        {
            errors.push(syn::Error::new_spanned(
                pt,
                "this context is already a parameter",
            ));
            continue;
        }
        params.push(p);
    }
    let output: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let returns_unit = matches!(&output, Type::Tuple(t) if t.elems.is_empty());
    if let Type::ImplTrait(it) = &output {
        errors.push(syn::Error::new_spanned(
            it,
            "a handler must name its return type; `impl Trait` cannot be sent back to a caller",
        ));
    } else if let Some(span) = contains_reference(&output) {
        errors.push(syn::Error::new(
            span,
            "a handler returns an owned value (clone what you read from the state); borrowed results cannot outlive the state lock",
        ));
    }

    let has_cmd_ctx = params.iter().any(|p| matches!(p, Param::CommandCtx));
    let has_evt_ctx = params.iter().any(|p| matches!(p, Param::EventCtx));
    let state_mut = params.iter().find_map(|p| match p {
        Param::StateMut(t) => Some(t.clone()),
        _ => None,
    });
    let state_ref = params.iter().find_map(|p| match p {
        Param::StateRef(t) => Some(t.clone()),
        _ => None,
    });
    let asyncness = sig.asyncness;
    let shape = if let Some(state) = state_mut {
        if let Some(a) = asyncness {
            errors.push(syn::Error::new_spanned(
                a,
                "a command handler cannot be `async`: it runs inside the replicated state machine, on every node, \
                 in log order, so it must be a plain deterministic function; do I/O in an `async` #[event] handler",
            ));
        }
        if has_evt_ctx {
            errors.push(syn::Error::new(
                sig.ident.span(),
                "a command handler (it takes `&mut State`) gets `&mut CommandContext`, not `EventContext`",
            ));
        }
        Shape::Command { state }
    } else if let Some(state) = state_ref {
        if let Some(a) = asyncness {
            errors.push(syn::Error::new_spanned(
                a,
                "a query handler that reads state cannot be `async`: it runs while the state is locked; \
                 only a handler without state may be `async`",
            ));
        }
        if has_cmd_ctx || has_evt_ctx {
            errors.push(syn::Error::new(
                sig.ident.span(),
                "a query handler (it takes `&State`) takes no context",
            ));
        }
        Shape::Query { state }
    } else if has_cmd_ctx {
        errors.push(syn::Error::new(
            sig.ident.span(),
            "a handler that takes `&mut CommandContext` is a command handler and must also take `&mut State`",
        ));
        Shape::Event
    } else if returns_unit || has_evt_ctx {
        if has_evt_ctx && !returns_unit {
            errors.push(syn::Error::new_spanned(
                &sig.output,
                "an event handler returns nothing: there is no caller to return a value to",
            ));
        }
        Shape::Event
    } else {
        Shape::StatelessQuery
    };
    if let Some(e) = fallback::combine(errors) {
        return Err(e);
    }
    Ok(Parsed {
        msg,
        params,
        shape,
        output,
    })
}

fn try_expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let allowed = Allowed {
        attr: "handler",
        name: false,
        linearizable: false,
    };
    let parsed_args = args::parse(args, &allowed);
    let f: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[handler] goes on a free function",
            ));
        }
    };
    let parsed = parse(&f);
    let (_, p) = (parsed_args?, parsed?);
    let fn_name = &f.sig.ident;
    let fn_name_str = fn_name.to_string();
    let msg = &p.msg;
    let msg_span = msg.span();
    let out = &p.output;
    let out_span = out.span();
    let call_args = |state: &TokenStream, ctx: &TokenStream| -> Vec<TokenStream> {
        p.params
            .iter()
            .map(|param| match param {
                Param::StateMut(_) | Param::StateRef(_) => state.clone(),
                Param::CommandCtx | Param::EventCtx => ctx.clone(),
            })
            .collect()
    };
    let is_async = f.sig.asyncness.is_some();
    let body = match &p.shape {
        Shape::Command { state } => {
            let st_span = state.span();
            let args = call_args(&quote!(state), &quote!(ctx));
            let check_msg = quote_spanned!(msg_span=> ::catga::__private::assert_command::<#msg>);
            let check_state = quote_spanned!(st_span=> ::catga::__private::assert_state::<#state>);
            let check_out =
                quote_spanned!(out_span=> ::catga::__private::assert_command_output::<#out>);
            quote! {
                const _: fn() = #check_msg;
                const _: fn() = #check_state;
                const _: fn() = #check_out;
                impl ::catga::__private::Handled for #msg {
                    type Output = #out;
                    const ROUTE: ::catga::__private::Route<Self, #out> =
                        ::catga::__private::Route::Command { decode: ::catga::__private::decode_output::<#out> };
                }
                fn __catga_apply(
                    payload: &[u8],
                    state: &mut (dyn ::core::any::Any + Send + Sync),
                    ctx: &mut ::catga::CommandContext,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::catga::__private::ApplyError> {
                    ::catga::__private::apply_command::<#msg, #state, #out, _>(
                        payload, state, ctx,
                        |msg, state, ctx| { let _ = &ctx; #fn_name(msg #(, #args)*) },
                    )
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::CommandHandlerEntry {
                        name: <#msg as ::catga::__private::Message>::NAME,
                        handler: ::core::concat!(::core::module_path!(), "::", #fn_name_str),
                        state: ::catga::__private::StateInfo::of::<#state>,
                        apply: __catga_apply,
                    }
                }
            }
        }
        Shape::Query { state } => {
            let st_span = state.span();
            let args = call_args(&quote!(state), &quote!(()));
            let check_msg = quote_spanned!(msg_span=> ::catga::__private::assert_query::<#msg>);
            let check_state = quote_spanned!(st_span=> ::catga::__private::assert_state::<#state>);
            quote! {
                const _: fn() = #check_msg;
                const _: fn() = #check_state;
                fn __catga_run(msg: #msg, state: &(dyn ::core::any::Any + Send + Sync)) -> ::core::option::Option<#out> {
                    let state = ::catga::__private::downcast_state::<#state>(state)?;
                    ::core::option::Option::Some(#fn_name(msg #(, #args)*))
                }
                impl ::catga::__private::Handled for #msg {
                    type Output = #out;
                    const ROUTE: ::catga::__private::Route<Self, #out> = ::catga::__private::Route::Query {
                        consistency: <#msg as ::catga::__private::Query>::CONSISTENCY,
                        state: ::catga::__private::StateInfo::of::<#state>,
                        run: __catga_run,
                    };
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::QueryHandlerEntry {
                        name: <#msg as ::catga::__private::Message>::NAME,
                        handler: ::core::concat!(::core::module_path!(), "::", #fn_name_str),
                        state: ::core::option::Option::Some(::catga::__private::StateInfo::of::<#state>),
                    }
                }
            }
        }
        Shape::StatelessQuery => {
            let check_msg = quote_spanned!(msg_span=> ::catga::__private::assert_query::<#msg>);
            let call = if is_async {
                quote!(::std::boxed::Box::pin(#fn_name(msg)))
            } else {
                quote!(::std::boxed::Box::pin(::core::future::ready(#fn_name(msg))))
            };
            quote! {
                const _: fn() = #check_msg;
                fn __catga_run(msg: #msg) -> ::catga::__private::BoxFuture<'static, #out> { #call }
                impl ::catga::__private::Handled for #msg {
                    type Output = #out;
                    const ROUTE: ::catga::__private::Route<Self, #out> =
                        ::catga::__private::Route::StatelessQuery { run: __catga_run };
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::QueryHandlerEntry {
                        name: <#msg as ::catga::__private::Message>::NAME,
                        handler: ::core::concat!(::core::module_path!(), "::", #fn_name_str),
                        state: ::core::option::Option::None,
                    }
                }
            }
        }
        Shape::Event => {
            let check_msg = quote_spanned!(msg_span=> ::catga::__private::assert_event::<#msg>);
            let args = call_args(&quote!(()), &quote!(ctx));
            let call = if is_async {
                quote!(::std::boxed::Box::pin(#fn_name(msg #(, #args)*)))
            } else {
                quote!({ #fn_name(msg #(, #args)*); ::std::boxed::Box::pin(::core::future::ready(())) })
            };
            quote! {
                const _: fn() = #check_msg;
                fn __catga_on_event(
                    payload: &[u8],
                    ctx: ::catga::EventContext,
                ) -> ::core::result::Result<::catga::__private::BoxFuture<'static, ()>, ::catga::__private::ApplyError> {
                    let msg: #msg = ::catga::__private::decode_message(payload)?;
                    let _ = &ctx;
                    ::core::result::Result::Ok(#call)
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::EventHandlerEntry {
                        name: <#msg as ::catga::__private::Message>::NAME,
                        handler: ::core::concat!(::core::module_path!(), "::", #fn_name_str),
                        call: __catga_on_event,
                    }
                }
            }
        }
    };
    Ok(quote! {
        #f
        #[doc(hidden)]
        const _: () = { #body };
    })
}
