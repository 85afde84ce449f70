//! Code generation only: every check that could fail has run (in `valid`)
//! or is emitted here as a spanned assertion for the type system to decide.
//! Generated code names the runtime only through `<crate>::__private`.

pub mod data;
pub mod handler;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote_spanned};
use syn::visit_mut::VisitMut;
use syn::{Lifetime, Type};

/// The spans of the first and the last token of `tokens`: generated code
/// that starts at the first and ends at the last is reported by rustc on
/// the whole of `tokens` (a `Span::join` that works on stable).
pub fn span_range(tokens: &impl ToTokens) -> (Span, Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

/// `<ty as trait_path>::item`, reported by rustc on `ty` (see [`span_range`]).
pub fn assert_on(ty: &Type, trait_path: TokenStream, item: TokenStream) -> TokenStream {
    let (first, last) = span_range(ty);
    let open = quote_spanned!(first=> <);
    let rest = quote_spanned!(last=> as #trait_path>::#item);
    quote::quote!(#open #ty #rest)
}

/// `ty` with every lifetime made nameable outside the handler: the
/// handler's own lifetime parameters (and elided ones, when `all`) become
/// `with` (`'static` in a `const`, `'_` in a body).
pub fn relifetime(ty: &Type, declared: &[Lifetime], with: &str, all: bool) -> Type {
    struct R<'a> {
        declared: &'a [Lifetime],
        with: Lifetime,
        all: bool,
    }
    impl VisitMut for R<'_> {
        fn visit_lifetime_mut(&mut self, l: &mut Lifetime) {
            if self.declared.iter().any(|d| d.ident == l.ident) || (self.all && l.ident == "_") {
                *l = Lifetime::new(&format!("'{}", self.with.ident), l.span());
            }
        }
        fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
            if self.all && r.lifetime.is_none() {
                r.lifetime = Some(Lifetime::new(
                    &format!("'{}", self.with.ident),
                    r.and_token.span,
                ));
            }
            syn::visit_mut::visit_type_reference_mut(self, r);
        }
    }
    let mut ty = ty.clone();
    R {
        declared,
        with: Lifetime::new(with, Span::call_site()),
        all,
    }
    .visit_type_mut(&mut ty);
    ty
}
