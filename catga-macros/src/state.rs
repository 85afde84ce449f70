//! `#[state]`: serde glue and a stable snapshot name for a state type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Item};

use crate::args::{self, Allowed};
use crate::fallback;
use crate::message::check_no_serde_derive;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(args, item.clone()) {
        Ok(ts) => ts,
        Err(e) => fallback::with_errors(item, e),
    }
}

fn try_expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let allowed = Allowed {
        attr: "state",
        name: true,
        linearizable: false,
    };
    let parsed_args = args::parse(args, &allowed);
    let input: DeriveInput = match syn::parse2::<Item>(item)? {
        Item::Struct(s) => s.into(),
        Item::Enum(e) => e.into(),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "#[state] goes on a struct or an enum",
            ));
        }
    };
    let args = parsed_args?;
    let mut errors = Vec::new();
    check_no_serde_derive(&input.attrs, "state", &mut errors);
    if !input.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            "#[state] types cannot be generic: each snapshot name must stand for one concrete type",
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
    let serde_attrs = quote_spanned! {ident.span()=>
        #[derive(::catga::__private::serde::Serialize, ::catga::__private::serde::Deserialize)]
        #[serde(crate = "::catga::__private::serde")]
    };
    let assert = quote_spanned! {ident.span()=>
        const _: fn() = ::catga::__private::assert_state::<#ident>;
    };
    Ok(quote! {
        #serde_attrs
        #input
        const _: () = {
            #assert
            ::catga::__private::inventory::submit! {
                ::catga::__private::StateEntry {
                    name: #name,
                    info: ::catga::__private::StateInfo::of::<#ident>,
                }
            }
        };
    })
}
