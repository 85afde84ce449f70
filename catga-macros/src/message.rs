//! `#[command]`, `#[query]` and `#[event]`: serde glue, a wire name, the
//! marker traits and a registry entry.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, DeriveInput, Item};

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
    match try_expand(kind, args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => fallback::with_errors(item, e),
    }
}

/// Rejects a user's own `derive(Serialize)`/`derive(Deserialize)`: the
/// attribute adds them, and two derives would conflict.
pub fn check_no_serde_derive(attrs: &[Attribute], attr: &str, errors: &mut Vec<syn::Error>) {
    for a in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = a.parse_nested_meta(|m| {
            if let Some(last) = m.path.segments.last()
                && (last.ident == "Serialize" || last.ident == "Deserialize")
            {
                errors.push(syn::Error::new_spanned(
                    &m.path,
                    format!(
                        "#[{attr}] already derives Serialize and Deserialize (through catga's own serde); remove `{}` from this derive",
                        last.ident
                    ),
                ));
            }
            Ok(())
        });
    }
}

fn try_expand(kind: Kind, args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let attr = kind.attr();
    let allowed = Allowed {
        attr,
        name: true,
        linearizable: matches!(kind, Kind::Query),
    };
    let parsed_args = args::parse(args, &allowed);
    let input: DeriveInput = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Struct(s)) => s.into(),
        Ok(Item::Enum(e)) => e.into(),
        Ok(Item::Union(u)) => {
            return Err(syn::Error::new_spanned(
                u.union_token,
                format!("#[{attr}] cannot be used on a union: use a struct or an enum"),
            ));
        }
        Ok(other) => {
            return Err(syn::Error::new(
                first_token_span(&other),
                format!("#[{attr}] goes on a struct or an enum, not on this item"),
            ));
        }
        Err(e) => return Err(e),
    };
    let args = parsed_args?;

    let mut errors = Vec::new();
    check_no_serde_derive(&input.attrs, attr, &mut errors);
    if !input.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            format!(
                "#[{attr}] types cannot be generic: each wire name must stand for one concrete type"
            ),
        ));
    }
    if let Some(e) = fallback::combine(errors) {
        return Err(e);
    }

    let ident = &input.ident;
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
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
    Ok(quote! {
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

fn first_token_span(item: &Item) -> proc_macro2::Span {
    match item {
        Item::Fn(f) => f.sig.fn_token.span,
        Item::Trait(t) => t.trait_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Type(t) => t.type_token.span,
        Item::Mod(m) => m.mod_token.span,
        Item::Const(c) => c.const_token.span,
        Item::Static(s) => s.static_token.span,
        other => other.span(),
    }
}
