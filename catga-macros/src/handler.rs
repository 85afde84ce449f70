//! `#[handler]`: classify the function by its signature, check what can be
//! checked syntactically, and expand into a trait impl plus a registry entry.
//! Whether the message really is a command, query or event is left to the
//! type system (spanned bounds on the runtime's traits), so the error lands on
//! the user's type with the runtime's `on_unimplemented` text.
//!
//! Each bound on a user's type is required at exactly one place in the
//! expansion (see `catga::__private`), so that one mistake is one error.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{FnArg, Item, ItemFn, Pat, PatType, ReturnType, Type};

use crate::args::{self, Allowed};
use crate::fallback;
use crate::message::describe;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let expanded = try_expand(args, item.clone(), &mut errors);
    let mut out = expanded.unwrap_or(item);
    if let Some(e) = fallback::combine(errors) {
        out.extend(e.to_compile_error());
    }
    out
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

fn is_context(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    last_ident_is(ty, "CommandContext") || last_ident_is(ty, "EventContext")
}

/// The first reference or lifetime in `ty`, for the "borrowed result" error.
fn find_borrow(ty: &Type) -> Option<TokenStream> {
    struct Finder(Option<TokenStream>);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_reference(&mut self, r: &'a syn::TypeReference) {
            if self.0.is_none() {
                self.0 = Some(r.to_token_stream());
            }
        }
        fn visit_lifetime(&mut self, l: &'a syn::Lifetime) {
            if self.0.is_none() {
                self.0 = Some(l.to_token_stream());
            }
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// `tokens` as a user would write them (`&mut Shop`, not `& mut Shop`).
fn pretty(tokens: &impl ToTokens) -> String {
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

/// The spans of the first and the last token of `tokens`: generated code
/// that starts at the first and ends at the last is reported by rustc on
/// the whole of `tokens` (a `Span::join` that works on stable).
fn span_range(tokens: &impl ToTokens) -> (Span, Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

fn parse(f: &ItemFn, errors: &mut Vec<syn::Error>) -> Option<Parsed> {
    let sig = &f.sig;
    let errors_before = errors.len();
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
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "a handler cannot be an `unsafe fn`: the runtime calls it with no way to uphold its safety contract; \
             use `unsafe` blocks inside it instead",
        ));
    }
    if let Some(abi) = &sig.abi
        && abi.name.as_ref().is_none_or(|n| n.value() != "Rust")
    {
        errors.push(syn::Error::new_spanned(
            abi,
            "a handler cannot have a non-Rust ABI: a panic in an `extern \"C\" fn` aborts the \
             process, on every replica and again on every restart, instead of being returned \
             as an error; write a plain `fn` and call foreign code from inside it",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(v, "a handler cannot be variadic"));
    }
    let mut inputs = sig.inputs.iter();
    let msg = match inputs.next() {
        None => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a handler takes its message as the first parameter, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`",
            ));
            return None;
        }
        Some(FnArg::Receiver(r)) => {
            errors.push(syn::Error::new_spanned(
                r,
                "a handler is a free function: it cannot take `self`; take the message as the first parameter",
            ));
            return None;
        }
        Some(FnArg::Typed(pt)) => {
            if let Type::Reference(r) = &*pt.ty {
                // `fn f(shop: &mut Shop, cmd: PlaceOrder)`: the message is
                // there, in the wrong place. Say so once, on the message.
                let misplaced = sig.inputs.iter().skip(1).find_map(|a| match a {
                    FnArg::Typed(p)
                        if !matches!(&*p.ty, Type::Reference(_)) && !is_context(&p.ty) =>
                    {
                        Some(p)
                    }
                    _ => None,
                });
                if let Some(m) = misplaced {
                    errors.push(syn::Error::new_spanned(
                        m,
                        format!(
                            "a handler takes its message first: move `{}` to the front, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`",
                            pretty(m)
                        ),
                    ));
                    return None;
                }
                // `fn f(shop: &mut Shop, ..)` or `fn f(ctx: &mut CommandContext)`:
                // the message is missing, not borrowed.
                if r.mutability.is_some() || is_context(&pt.ty) {
                    errors.push(syn::Error::new_spanned(
                        r,
                        format!(
                            "a handler's first parameter is the message it handles, by value: add it before `{}`, e.g. `fn place_order(cmd: PlaceOrder, shop: &mut Shop)`",
                            pretty(pt)
                        ),
                    ));
                    return None;
                }
                errors.push(syn::Error::new_spanned(
                    r,
                    "take the message by value, e.g. `cmd: PlaceOrder`, not by reference",
                ));
            }
            (*pt.ty).clone()
        }
    };
    let mut params: Vec<(Param, &PatType)> = Vec::new();
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
            ty @ Type::Reference(r) if last_ident_is(&r.elem, "CommandContext") => {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "take the command context as `&mut CommandContext`",
                ));
                continue;
            }
            ty if last_ident_is(ty, "CommandContext") => {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "take the command context as `&mut CommandContext`",
                ));
                continue;
            }
            Type::Reference(r) => {
                let first_state = params
                    .iter()
                    .find(|(p, _)| matches!(p, Param::StateMut(_) | Param::StateRef(_)));
                if let Some((_, first)) = first_state {
                    errors.push(syn::Error::new_spanned(
                        &pt.ty,
                        format!(
                            "a handler takes at most one state, and it already takes `{}`; keep the data one handler needs in one state type",
                            pretty(first)
                        ),
                    ));
                    continue;
                }
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
        let is_ctx = matches!(p, Param::CommandCtx | Param::EventCtx);
        if is_ctx
            && params
                .iter()
                .any(|(q, _)| std::mem::discriminant(q) == std::mem::discriminant(&p))
        {
            errors.push(syn::Error::new_spanned(
                pt,
                "this context is already a parameter",
            ));
            continue;
        }
        params.push((p, pt));
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
    } else if let Some(borrow) = find_borrow(&output) {
        errors.push(syn::Error::new_spanned(
            borrow,
            "a handler returns an owned value (clone what you read from the state): a borrowed result cannot outlive the handler's access to the state",
        ));
    }

    let find = |want: fn(&Param) -> bool| params.iter().find(|(p, _)| want(p)).map(|(_, pt)| *pt);
    let cmd_ctx = find(|p| matches!(p, Param::CommandCtx));
    let evt_ctx = find(|p| matches!(p, Param::EventCtx));
    let state_mut = params.iter().find_map(|(p, _)| match p {
        Param::StateMut(t) => Some(t.clone()),
        _ => None,
    });
    let state_ref = params.iter().find_map(|(p, _)| match p {
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
        if let Some(pt) = evt_ctx {
            errors.push(syn::Error::new_spanned(
                &pt.ty,
                "a command handler (it takes `&mut State`) gets `ctx: &mut CommandContext`, not `EventContext`",
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
        if let Some(pt) = cmd_ctx.or(evt_ctx) {
            errors.push(syn::Error::new_spanned(
                &pt.ty,
                "a query handler (it takes `&State`) takes no context",
            ));
        }
        Shape::Query { state }
    } else if let Some(pt) = cmd_ctx {
        errors.push(syn::Error::new_spanned(
            &pt.ty,
            "a handler that takes `&mut CommandContext` is a command handler and must also take the state it changes, \
             e.g. `shop: &mut Shop`",
        ));
        Shape::Event
    } else if returns_unit || evt_ctx.is_some() {
        if evt_ctx.is_some() && !returns_unit {
            errors.push(syn::Error::new_spanned(
                &sig.output,
                "an event handler returns nothing: there is no caller to return a value to",
            ));
        }
        Shape::Event
    } else {
        Shape::StatelessQuery
    };
    if errors.len() > errors_before {
        return None;
    }
    Some(Parsed {
        msg,
        params: params.into_iter().map(|(p, _)| p).collect(),
        shape,
        output,
    })
}

fn try_expand(
    args: TokenStream,
    item: TokenStream,
    errors: &mut Vec<syn::Error>,
) -> Option<TokenStream> {
    let allowed = Allowed {
        attr: "handler",
        name: false,
        linearizable: false,
        hint: "set a wire name on the message type instead, e.g. `#[command(name = \"shop.PlaceOrder\")]`",
    };
    // Unknown arguments are reported, and the handler is still registered.
    let _ = args::parse(args, &allowed, errors);
    let f: ItemFn = match syn::parse2::<Item>(item) {
        Ok(Item::Fn(f)) => f,
        Ok(other) => {
            let (span, what) = describe(&other);
            errors.push(syn::Error::new(
                span,
                format!("#[handler] goes on a free function, not on {what}"),
            ));
            return None;
        }
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let p = parse(&f, errors)?;
    Some(expand_handler(&f, &p))
}

fn expand_handler(f: &ItemFn, p: &Parsed) -> TokenStream {
    let fn_name = &f.sig.ident;
    let fn_name_str = fn_name.to_string();
    let handler_path = quote!(::core::concat!(::core::module_path!(), "::", #fn_name_str));
    let msg = &p.msg;
    let (msg_first, msg_last) = span_range(msg);
    let out = &p.output;
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
    // `impl Handled for Msg`, spanned on the message type: a type that is not a
    // message, or a second handler for the same message, is reported there.
    let impl_handled = |items: TokenStream| {
        quote_spanned! {msg_first=>
            impl ::catga::__private::Handled for #msg {
                #items
            }
        }
    };
    // `require_xxx(&Probe::<Msg>::KIND)`, reported on the whole message type.
    let require_kind = |check: &str| {
        // The callee and the argument both span the whole message type, so
        // that rustc reports one span (`orders::PlaceOrder`), not two.
        let check = syn::Ident::new(check, msg_last);
        let path_head = quote_spanned!(msg_first=> ::catga::__private::);
        let path = quote!(#path_head #check);
        let head = quote_spanned!(msg_first=> &::catga::__private::Probe::<);
        let tail = quote_spanned!(msg_last=> >::KIND);
        let mut arg = Group::new(Delimiter::Parenthesis, quote!(#head #msg #tail));
        arg.set_span(msg_last);
        quote!(const _: () = #path #arg;)
    };
    let state_info = |state: &Type| {
        let (first, _) = span_range(state);
        let head = quote_spanned!(first=> ::catga::__private::StateInfo::of::<);
        quote!(const __CATGA_STATE: fn() -> ::catga::__private::StateInfo = #head #state>;)
    };
    let body = match &p.shape {
        Shape::Command { state } => {
            let args = call_args(&quote!(state), &quote!(ctx));
            let check_kind = require_kind("require_command");
            let state_info = state_info(state);
            let (out_first, _) = span_range(out);
            let out_codec = quote_spanned!(out_first=> ::catga::__private::output_codec::<#out>());
            let handled = impl_handled(quote! {
                type Output = #out;
                const ROUTE: ::catga::__private::Route<Self, #out> =
                    ::catga::__private::Route::Command { decode: __CATGA_OUTPUT.decode };
            });
            quote! {
                #check_kind
                #state_info
                const __CATGA_OUTPUT: ::catga::__private::OutputCodec<#out> = #out_codec;
                #handled
                fn __catga_apply(
                    payload: &[u8],
                    state: &mut (dyn ::core::any::Any + Send + Sync),
                    ctx: &mut ::catga::CommandContext,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::catga::__private::ApplyError> {
                    ::catga::__private::apply_command::<#msg, #state, #out, _>(
                        payload, state, ctx, __CATGA_OUTPUT.encode,
                        |msg, state, ctx| { let _ = &ctx; #fn_name(msg #(, #args)*) },
                    )
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::CommandHandlerEntry {
                        name: ::catga::__private::name_of::<#msg>(),
                        handler: #handler_path,
                        state: __CATGA_STATE,
                        apply: __catga_apply,
                    }
                }
            }
        }
        Shape::Query { state } => {
            let args = call_args(&quote!(state), &quote!(()));
            let check_kind = require_kind("require_query");
            let state_info = state_info(state);
            let handled = impl_handled(quote! {
                type Output = #out;
                const ROUTE: ::catga::__private::Route<Self, #out> = ::catga::__private::Route::Query {
                    consistency: ::catga::__private::Probe::<#msg>::CONSISTENCY,
                    state: __CATGA_STATE,
                    run: __catga_run,
                };
            });
            quote! {
                #check_kind
                #state_info
                fn __catga_run(msg: #msg, state: &(dyn ::core::any::Any + Send + Sync)) -> ::core::option::Option<#out> {
                    let state = ::catga::__private::downcast_state::<#state>(state)?;
                    ::core::option::Option::Some(#fn_name(msg #(, #args)*))
                }
                #handled
                ::catga::__private::inventory::submit! {
                    ::catga::__private::QueryHandlerEntry {
                        name: ::catga::__private::name_of::<#msg>(),
                        handler: #handler_path,
                        state: ::core::option::Option::Some(__CATGA_STATE),
                    }
                }
            }
        }
        Shape::StatelessQuery => {
            let check_kind = require_kind("require_query");
            let call = if is_async {
                quote_spanned!(fn_name.span()=> ::std::boxed::Box::pin(#fn_name(msg)))
            } else {
                quote!(::std::boxed::Box::pin(::core::future::ready(#fn_name(msg))))
            };
            let handled = impl_handled(quote! {
                type Output = #out;
                const ROUTE: ::catga::__private::Route<Self, #out> =
                    ::catga::__private::Route::StatelessQuery { run: __catga_run };
            });
            quote! {
                #check_kind
                fn __catga_run(msg: #msg) -> ::catga::__private::BoxFuture<'static, #out> { #call }
                #handled
                ::catga::__private::inventory::submit! {
                    ::catga::__private::QueryHandlerEntry {
                        name: ::catga::__private::name_of::<#msg>(),
                        handler: #handler_path,
                        state: ::core::option::Option::None,
                    }
                }
            }
        }
        Shape::Event => {
            let args = call_args(&quote!(()), &quote!(ctx));
            let codec = {
                let head = quote_spanned!(msg_first=> ::catga::__private::event_codec::<);
                quote!(#head #msg>())
            };
            let call = if is_async {
                quote_spanned!(fn_name.span()=> ::std::boxed::Box::pin(#fn_name(msg #(, #args)*)))
            } else {
                quote!({ #fn_name(msg #(, #args)*); ::std::boxed::Box::pin(::core::future::ready(())) })
            };
            quote! {
                const __CATGA_EVENT: ::catga::__private::EventCodec<#msg> = #codec;
                fn __catga_on_event(
                    payload: &[u8],
                    ctx: ::catga::EventContext,
                ) -> ::core::result::Result<::catga::__private::BoxFuture<'static, ()>, ::catga::__private::ApplyError> {
                    let msg: #msg = (__CATGA_EVENT.decode)(payload)?;
                    let _ = &ctx;
                    ::core::result::Result::Ok(#call)
                }
                ::catga::__private::inventory::submit! {
                    ::catga::__private::EventHandlerEntry {
                        name: __CATGA_EVENT.name,
                        handler: #handler_path,
                        call: __catga_on_event,
                    }
                }
            }
        }
    };
    quote! {
        #f
        #[doc(hidden)]
        const _: () = {
            #[allow(unused_imports)]
            use ::catga::__private::ProbeFallback as _;
            #body
        };
    }
}
