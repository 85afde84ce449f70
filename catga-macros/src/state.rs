//! `#[state]`: serde glue and a stable snapshot name for a state type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Item};

use crate::args::{self, Allowed};
use crate::fallback;
use crate::message::{describe, strip_serde_derives};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let expanded = try_expand(args, item.clone(), &mut errors);
    let mut out = expanded.unwrap_or(item);
    if let Some(e) = fallback::combine(errors) {
        out.extend(e.to_compile_error());
    }
    out
}

fn try_expand(
    args: TokenStream,
    item: TokenStream,
    errors: &mut Vec<syn::Error>,
) -> Option<TokenStream> {
    let allowed = Allowed {
        attr: "state",
        name: true,
        linearizable: false,
        hint: "",
    };
    let args = args::parse(args, &allowed, errors);
    let mut input: DeriveInput = match syn::parse2::<Item>(item) {
        Ok(Item::Struct(s)) => s.into(),
        Ok(Item::Enum(e)) => e.into(),
        Ok(Item::Union(u)) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                "#[state] cannot be used on a union: use a struct or an enum",
            ));
            return None;
        }
        Ok(other) => {
            let (span, what) = describe(&other);
            errors.push(syn::Error::new(
                span,
                format!("#[state] goes on a struct or an enum, not on {what}"),
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
            "#[state] types cannot be generic: each snapshot name must stand for one concrete type",
        ));
        return None;
    }
    strip_serde_derives(&mut input.attrs, "state", errors);
    let ident = &input.ident;
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    let serde_attrs = quote_spanned! {ident.span()=>
        #[derive(::catga::__private::serde::Serialize, ::catga::__private::serde::Deserialize)]
        #[serde(crate = "::catga::__private::serde")]
    };
    // The one place where `State` is required of the type: a type that is
    // not `Default` (or not `Send + Sync`) is reported on its name.
    let info = quote_spanned! {ident.span()=> ::catga::__private::StateInfo::of::<#ident>};
    Some(quote! {
        #serde_attrs
        #input
        const _: () = {
            ::catga::__private::inventory::submit! {
                ::catga::__private::StateEntry {
                    name: #name,
                    info: #info,
                }
            }
        };
    })
}
