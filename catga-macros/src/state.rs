//! `#[state]`: serde glue and a stable snapshot name for a state type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::args::{self, Allowed};
use crate::fallback;
use crate::message::data_type;

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
    let (input, name) = data_type("state", "snapshot name", item, args.name.as_ref(), errors)?;
    let ident = &input.ident;
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
