//! What to emit when expansion fails: the user's item unchanged plus the
//! errors, so that the rest of their crate still type-checks against it.

use proc_macro2::TokenStream;
use quote::quote;

/// Emits `item` followed by every error in `err`.
pub fn with_errors(item: TokenStream, err: syn::Error) -> TokenStream {
    let errors = err.to_compile_error();
    quote! { #item #errors }
}

/// Folds a list of errors into one (reported together), or `None`.
pub fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    let mut iter = errors.into_iter();
    let mut first = iter.next()?;
    for e in iter {
        first.combine(e);
    }
    Some(first)
}
