//! `#[command]`, `#[query]`, `#[event]` and `#[state]`: serde glue (each
//! field checked on its own, so a field that cannot be encoded is one error
//! on that field), the marker traits, and a registry entry.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Data, Field, Fields, Ident, LitStr, Meta, Token, Type};

use super::{assert_on, span_range};
use crate::ast::DataType;
use crate::attr::{Args, Attr};
use crate::valid::{message_attr, serde_crate, serde_derives};

/// The expansion of a data attribute on `data` (already checked; the
/// user's own serde derives and a second message attribute, reported by
/// `valid`, are dropped here).
///
/// An item with `#[serde(crate = "...")]` and no serde derive had its
/// `#[derive(Serialize, Deserialize)]` written above the attribute: that
/// derive has already run (reported by `valid`), its impls exist and ours
/// would clash, so only the user's are kept.
pub fn expand(attr: Attr, args: &Args, data: DataType) -> TokenStream {
    let k = args.krate();
    let mut input = data.input;
    if attr != Attr::State {
        input.attrs.retain(|a| message_attr(a).is_none());
    }
    let keep_users = serde_crate(&input.attrs).is_some()
        && !input.attrs.iter().any(|a| serde_derives(a).is_some());
    if !keep_users {
        strip_serde(&mut input.attrs);
    }
    let ident = input.ident.clone();
    let all_fields = match &input.data {
        Data::Struct(s) => s.fields.len(),
        Data::Enum(e) => e.variants.iter().map(|v| v.fields.len()).sum(),
        Data::Union(_) => 0,
    };
    let fields = wrap_fields(&mut input.data, &ident, args);
    // A state's fields must be Sync too (`StateField`); then `#[state]`
    // requires only `Default` of the type itself, and a field that cannot be
    // part of a state is one error, on it. When a field is left unchecked
    // (`#[serde(with = ..)]`, `skip`), the whole `State` is required instead.
    let field_trait = if attr == Attr::State {
        quote!(#k::__private::StateField)
    } else {
        quote!(#k::__private::WireField)
    };
    let state_trait = if fields.len() == all_fields {
        quote!(#k::__private::StateInit)
    } else {
        quote!(#k::__private::StateType)
    };
    let field_checks = fields
        .iter()
        .map(|ty| assert_on(ty, field_trait.clone(), quote!(ASSERT)));
    let serde_crate = format!("{}::__private::serde", args.krate_string());
    let serde_attrs = (!keep_users).then(|| {
        quote_spanned! {ident.span()=>
            #[derive(#k::__private::serde::Serialize, #k::__private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
        }
    });
    let fallback_import = (!fields.is_empty()).then(|| {
        quote! {
            #[allow(unused_imports)]
            use #k::__private::FieldFallback as _;
        }
    });
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    let body = match attr {
        Attr::State => state(&k, &ident, &name, state_trait),
        _ => message(attr, args, &k, &ident, &name),
    };
    quote! {
        #fallback_import
        #serde_attrs
        #input
        const _: () = {
            #(const _: () = #field_checks;)*
            #body
        };
    }
}

fn message(
    attr: Attr,
    args: &Args,
    k: &TokenStream,
    ident: &Ident,
    name: &TokenStream,
) -> TokenStream {
    // `Send` is required of every field (`WireField`, on the field); the
    // higher-ranked bound defers the same requirement here, so that a field
    // that is not `Send` is one error, not one more per impl.
    let send = quote!(where for<'__catga> #ident: ::core::marker::Send);
    let (kind, marker) = match attr {
        Attr::Command => (
            quote!(Command),
            quote!(impl #k::__private::Command for #ident #send {}),
        ),
        Attr::Query => {
            let consistency = if args.linearizable.is_some() {
                quote!(Linearizable)
            } else {
                quote!(Local)
            };
            let routing = routing(args, k, ident);
            (
                quote!(Query),
                quote! {
                    impl #k::__private::Query for #ident #send {
                        const CONSISTENCY: #k::__private::Consistency =
                            #k::__private::Consistency::#consistency;
                        const ROUTING: #k::__private::Routing<Self> = #routing;
                    }
                },
            )
        }
        _ => (
            quote!(Event),
            quote!(impl #k::__private::Event for #ident #send {}),
        ),
    };
    quote! {
        impl #k::__private::Message for #ident #send {
            const NAME: &'static str = #name;
            const KIND: #k::__private::MessageKind = #k::__private::MessageKind::#kind;
        }
        #marker
        // A message written after a handler's first parameter is known as
        // one (`Slot::Message`), so that `fn f(ctx: CommandContext, cmd: Msg,
        // shop: &mut Shop)` is not also "`Msg` cannot be a parameter". (An
        // event handler's parameters get it from `EventParam<true>`, over
        // every message: a type here would overlap `EventParam` over `State`
        // for a message that derives `Default`; the impls over a state are for
        // references, so these overlap nothing.)
        #[diagnostic::do_not_recommend]
        impl<'__catga> #k::__private::CommandParam<'__catga> for #ident {
            const SLOT: #k::__private::Slot =
                #k::__private::Slot::Message(#k::__private::MessageKind::#kind);
            fn take(
                _: &#k::__private::CommandEnv<'__catga>,
            ) -> ::core::option::Option<Self> {
                ::core::option::Option::None
            }
        }
        #[diagnostic::do_not_recommend]
        impl<'__catga> #k::__private::QueryParam<'__catga> for #ident {
            const SLOT: #k::__private::Slot =
                #k::__private::Slot::Message(#k::__private::MessageKind::#kind);
            fn take(
                _: &'__catga (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
            ) -> ::core::option::Option<Self> {
                ::core::option::Option::None
            }
        }
        #k::__private::inventory::submit! {
            #k::__private::MessageEntry {
                name: #name,
                kind: #k::__private::MessageKind::#kind,
                rust_type: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
            }
        }
    }
}

/// With errors, for a type refused because it has lifetime parameters
/// (`struct Rename<'a> { name: &'a str }`, reported on them): impls that
/// stand in for the expansion (never run: the crate does not compile), so
/// that a handler of `Rename<'static>` or one taking `&mut` such a state is
/// not one more error. Nothing for a type with type or const parameters.
pub fn lifetime_stubs(attr: Attr, args: &Args, data: &DataType) -> TokenStream {
    let generics = &data.input.generics;
    if !generics
        .params
        .iter()
        .all(|p| matches!(p, syn::GenericParam::Lifetime(_)))
    {
        return TokenStream::new();
    }
    let k = args.krate();
    let ident = &data.input.ident;
    let (impl_g, ty_g, _) = generics.split_for_impl();
    if attr == Attr::State {
        return quote!(impl #impl_g #k::__private::DeclaredState for #ident #ty_g {});
    }
    let lifetimes = generics.params.iter();
    let serde = quote!(#k::__private::serde);
    let kind = match attr {
        Attr::Command => quote!(Command),
        Attr::Query => quote!(Query),
        _ => quote!(Event),
    };
    let marker = quote!(impl #impl_g #k::__private::#kind for #ident #ty_g where Self: 'static {});
    quote! {
        const _: () = {
            impl #impl_g #serde::Serialize for #ident #ty_g {
                fn serialize<__S: #serde::Serializer>(
                    &self,
                    _: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    ::core::unreachable!("a refused message does not compile")
                }
            }
            impl<'de, #(#lifetimes),*> #serde::Deserialize<'de> for #ident #ty_g {
                fn deserialize<__D: #serde::Deserializer<'de>>(
                    _: __D,
                ) -> ::core::result::Result<Self, __D::Error> {
                    ::core::unreachable!("a refused message does not compile")
                }
            }
            impl #impl_g #k::__private::Message for #ident #ty_g where Self: 'static {
                const NAME: &'static str = ::core::stringify!(#ident);
                const KIND: #k::__private::MessageKind = #k::__private::MessageKind::#kind;
            }
            #marker
        };
    }
}

/// The `Routing` of a query, from `route = ...`; `key(field)` becomes a fn
/// that hashes the field with the runtime's stable hash.
fn routing(args: &Args, k: &TokenStream, ident: &Ident) -> TokenStream {
    use crate::attr::Route;
    match &args.route {
        None | Some(Route::Local) => quote!(#k::__private::Routing::Local),
        Some(Route::Leader) => quote!(#k::__private::Routing::Leader),
        Some(Route::RoundRobin) => quote!(#k::__private::Routing::RoundRobin),
        Some(Route::LeastLoaded) => quote!(#k::__private::Routing::LeastLoaded),
        Some(Route::Key(member)) => quote! {
            #k::__private::Routing::Key({
                fn __catga_key(m: &#ident) -> u64 {
                    #k::__private::route_key(&m.#member)
                }
                __catga_key
            })
        },
    }
}

fn state(k: &TokenStream, ident: &Ident, name: &TokenStream, check: TokenStream) -> TokenStream {
    // The one place where the type itself is checked: a type that is not
    // `Default` is reported on its name.
    let ty: Type = syn::parse_quote!(#ident);
    let check = assert_on(&ty, check, quote!(ASSERT));
    quote! {
        const _: () = #check;
        // Whatever its fields: a handler that takes it adds no error when
        // they are reported (see `DeclaredState`).
        impl #k::__private::DeclaredState for #ident {}
        #[allow(unused_imports)]
        use #k::__private::StatefulFallback as _;
        #k::__private::inventory::submit! {
            #k::__private::StateEntry {
                name: #name,
                info: #k::__private::Stateful::<#ident>::INFO,
            }
        }
    }
}

/// Drops the user's `Serialize`/`Deserialize` derives (reported by `valid`)
/// and their `#[serde(crate = "...")]` (we set our own): the item is then
/// expanded as if they were not there, so the mistake is one error.
fn strip_serde(attrs: &mut Vec<Attribute>) {
    let mut keep = Vec::with_capacity(attrs.len());
    for a in attrs.drain(..) {
        if let Some((_, rest)) = serde_derives(&a) {
            if !rest.is_empty() {
                let mut derive: Attribute = syn::parse_quote!(#[derive(#(#rest),*)]);
                derive.pound_token = a.pound_token;
                derive.bracket_token = a.bracket_token;
                keep.push(derive);
            }
            continue;
        }
        if a.path().is_ident("serde")
            && let Ok(metas) = a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
        {
            let rest: Vec<&Meta> = metas
                .iter()
                .filter(|m| !m.path().is_ident("crate"))
                .collect();
            if rest.len() != metas.len() {
                if !rest.is_empty() {
                    keep.push(syn::parse_quote!(#[serde(#(#rest),*)]));
                }
                continue;
            }
        }
        keep.push(a);
    }
    *attrs = keep;
}

/// Field attributes with which serde no longer (de)serializes the field's
/// type itself: such a field is left as written.
const CUSTOM: &[&str] = &[
    "with",
    "serialize_with",
    "deserialize_with",
    "skip",
    "skip_serializing",
    "skip_deserializing",
    "flatten",
    "getter",
    "borrow",
];

fn serde_metas(field: &Field) -> Vec<Meta> {
    field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .filter_map(|a| {
            a.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .collect()
}

/// Routes every plain field through `Field::<T>` (which falls back to a
/// never-run stand-in when `T` cannot be encoded), so that serde's derive
/// always compiles and `<T as WireField>` is the one error, on the field.
/// Returns the checked field types.
fn wrap_fields(data: &mut Data, ident: &Ident, args: &Args) -> Vec<Type> {
    let mut checked = Vec::new();
    let mut wrap = |fields: &mut Fields| {
        for field in fields.iter_mut() {
            let metas = serde_metas(field);
            if metas
                .iter()
                .any(|m| CUSTOM.iter().any(|c| m.path().is_ident(c)))
            {
                continue;
            }
            let ty = replace_self(&field.ty, ident);
            let (first, _) = span_range(&ty);
            let path = |f: &str| {
                let s = format!(
                    "{}::__private::Field::<{}>::{f}",
                    args.krate_string(),
                    ty.to_token_stream()
                );
                LitStr::new(&s, first)
            };
            let (ser, mut de) = (path("serialize"), path("deserialize"));
            if crate::valid::borrows(&ty) {
                // Refused by `valid` (on the field): keep serde's derive
                // general (`&str` and `&[u8]` would make it borrow from the
                // input), and check nothing more about this field.
                if implicitly_borrowed(&ty) {
                    field
                        .attrs
                        .push(syn::parse_quote!(#[serde(skip_deserializing)]));
                } else {
                    de = LitStr::new(
                        &format!("{}::__private::refused_field", args.krate_string()),
                        first,
                    );
                    field
                        .attrs
                        .push(syn::parse_quote!(#[serde(deserialize_with = #de)]));
                }
                continue;
            }
            field
                .attrs
                .push(syn::parse_quote!(#[serde(serialize_with = #ser, deserialize_with = #de)]));
            // serde fills a missing `Option` field with `None` on its own,
            // but not once `deserialize_with` is set: keep that behaviour.
            let has_default = metas.iter().any(|m| m.path().is_ident("default"));
            if !has_default && is_option(&ty) {
                field.attrs.push(syn::parse_quote!(#[serde(default)]));
            }
            checked.push(ty);
        }
    };
    match data {
        Data::Struct(s) => wrap(&mut s.fields),
        Data::Enum(e) => {
            for v in &mut e.variants {
                wrap(&mut v.fields);
            }
        }
        Data::Union(_) => {}
    }
    checked
}

/// `&str` or `&[u8]`: the types serde borrows from its input on its own.
fn implicitly_borrowed(ty: &Type) -> bool {
    let Type::Reference(r) = crate::ast::strip(ty) else {
        return false;
    };
    match crate::ast::strip(&r.elem) {
        Type::Path(p) => p.path.is_ident("str"),
        Type::Slice(s) => {
            matches!(crate::ast::strip(&s.elem), Type::Path(p) if p.path.is_ident("u8"))
        }
        _ => false,
    }
}

fn is_option(ty: &Type) -> bool {
    matches!(crate::ast::strip(ty), Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

/// `ty` with `Self` replaced by the type's name (the field's type is named
/// outside the type's own impls).
fn replace_self(ty: &Type, ident: &Ident) -> Type {
    struct R<'a>(&'a Ident);
    impl VisitMut for R<'_> {
        fn visit_ident_mut(&mut self, i: &mut Ident) {
            if i == "Self" {
                *i = Ident::new(&self.0.to_string(), i.span());
            }
        }
    }
    let mut ty = ty.clone();
    R(ident).visit_type_mut(&mut ty);
    ty
}
