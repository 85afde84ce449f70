//! `#[command]`, `#[query]` and `#[event]`: serde glue, a wire name, the
//! marker traits and a registry entry.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, DeriveInput, Item, Path, Token};

use crate::args::{self, Allowed};
use crate::fallback;

#[derive(Clone, Copy)]
pub enum Kind {
    Command,
    Query,
    Event,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Query => "query",
            Kind::Event => "event",
        }
    }
}

pub fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let expanded = try_expand(kind, args, item.clone(), &mut errors);
    let mut out = expanded.unwrap_or(item);
    if let Some(e) = fallback::combine(errors) {
        out.extend(e.to_compile_error());
    }
    out
}

/// Removes `Serialize`/`Deserialize` from the user's own derives, reporting
/// each: the attribute derives them (through catga's serde), and two derives
/// would conflict. The item is then expanded as if they were not there, so
/// the mistake is one error, not a cascade.
pub fn strip_serde_derives(attrs: &mut Vec<Attribute>, attr: &str, errors: &mut Vec<syn::Error>) {
    let mut keep = Vec::with_capacity(attrs.len());
    for a in attrs.drain(..) {
        if !a.path().is_ident("derive") {
            keep.push(a);
            continue;
        }
        let Ok(paths) = a.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated) else {
            keep.push(a);
            continue;
        };
        let (serde, rest): (Vec<Path>, Vec<Path>) = paths.into_iter().partition(|p| {
            p.segments
                .last()
                .is_some_and(|s| s.ident == "Serialize" || s.ident == "Deserialize")
        });
        if serde.is_empty() {
            keep.push(a);
            continue;
        }
        for p in &serde {
            let last = &p
                .segments
                .last()
                .expect("partitioned on the last segment")
                .ident;
            errors.push(syn::Error::new_spanned(
                p,
                format!(
                    "#[{attr}] already derives Serialize and Deserialize (through catga's own serde); remove `{last}` from this derive"
                ),
            ));
        }
        if !rest.is_empty() {
            let pound = a.pound_token;
            let bracket = a.bracket_token;
            let mut derive: Attribute = syn::parse_quote!(#[derive(#(#rest),*)]);
            derive.pound_token = pound;
            derive.bracket_token = bracket;
            keep.push(derive);
        }
    }
    *attrs = keep;
}

/// What to call `item` in an error ("not on a function"), and the span of
/// its leading keyword.
pub fn describe(item: &Item) -> (proc_macro2::Span, &'static str) {
    match item {
        Item::Fn(f) => (f.sig.fn_token.span, "a function"),
        Item::Struct(s) => (s.struct_token.span, "a struct"),
        Item::Enum(e) => (e.enum_token.span, "an enum"),
        Item::Union(u) => (u.union_token.span, "a union"),
        Item::Trait(t) => (t.trait_token.span, "a trait"),
        Item::Impl(i) => (i.impl_token.span, "an impl block"),
        Item::Type(t) => (t.type_token.span, "a type alias"),
        Item::Mod(m) => (m.mod_token.span, "a module"),
        Item::Const(c) => (c.const_token.span, "a const"),
        Item::Static(s) => (s.static_token.span, "a static"),
        Item::Use(u) => (u.use_token.span, "a `use`"),
        other => (other.span(), "this item"),
    }
}

fn try_expand(
    kind: Kind,
    args: TokenStream,
    item: TokenStream,
    errors: &mut Vec<syn::Error>,
) -> Option<TokenStream> {
    let attr = kind.attr();
    let allowed = Allowed {
        attr,
        name: true,
        linearizable: matches!(kind, Kind::Query),
        hint: "",
    };
    // Malformed arguments are reported and ignored: the type is still a
    // message, so its handlers and senders see no further error.
    let args = args::parse(args, &allowed, errors);
    let (input, name) = data_type(attr, "wire name", item, args.name.as_ref(), errors)?;
    let ident = &input.ident;
    let (kind_variant, marker) = match kind {
        Kind::Command => (
            quote!(Command),
            quote!(impl ::catga::__private::Command for #ident {}),
        ),
        Kind::Query => {
            let consistency = if args.linearizable.is_some() {
                quote!(Linearizable)
            } else {
                quote!(Local)
            };
            (
                quote!(Query),
                quote! {
                    impl ::catga::__private::Query for #ident {
                        const CONSISTENCY: ::catga::__private::Consistency =
                            ::catga::__private::Consistency::#consistency;
                    }
                },
            )
        }
        Kind::Event => (
            quote!(Event),
            quote!(impl ::catga::__private::Event for #ident {}),
        ),
    };
    let serde_attrs = quote_spanned! {ident.span()=>
        #[derive(::catga::__private::serde::Serialize, ::catga::__private::serde::Deserialize)]
        #[serde(crate = "::catga::__private::serde")]
    };
    Some(quote! {
        #serde_attrs
        #input
        const _: () = {
            impl ::catga::__private::Message for #ident {
                const NAME: &'static str = #name;
                const KIND: ::catga::__private::MessageKind = ::catga::__private::MessageKind::#kind_variant;
            }
            #marker
            ::catga::__private::inventory::submit! {
                ::catga::__private::MessageEntry {
                    name: <#ident as ::catga::__private::Message>::NAME,
                    kind: ::catga::__private::MessageKind::#kind_variant,
                    rust_type: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                }
            }
        };
    })
}

/// The part `#[command]`, `#[query]`, `#[event]` and `#[state]` share: the
/// item must be a non-generic struct or enum; a user's own serde derives are
/// removed (and reported); the name is `name = "..."` or `module::Type`.
/// `what` names what the name is for, in the generics error.
pub fn data_type(
    attr: &str,
    what: &str,
    item: TokenStream,
    name: Option<&syn::LitStr>,
    errors: &mut Vec<syn::Error>,
) -> Option<(DeriveInput, TokenStream)> {
    let mut input: DeriveInput = match syn::parse2::<Item>(item) {
        Ok(Item::Struct(s)) => s.into(),
        Ok(Item::Enum(e)) => e.into(),
        Ok(Item::Union(u)) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                format!("#[{attr}] cannot be used on a union: use a struct or an enum"),
            ));
            return None;
        }
        Ok(other) => {
            let (span, item_kind) = describe(&other);
            errors.push(syn::Error::new(
                span,
                format!("#[{attr}] goes on a struct or an enum, not on {item_kind}"),
            ));
            return None;
        }
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if !input.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            format!(
                "#[{attr}] types cannot be generic: each {what} must stand for one concrete type"
            ),
        ));
        return None;
    }
    strip_serde_derives(&mut input.attrs, attr, errors);
    let ident = &input.ident;
    let name = match name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    Some((input, name))
}
