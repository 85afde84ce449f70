//! The error sink, and the one thing every macro emits when it has errors:
//! the user's item, plus stub impls standing in for the expansion (so a
//! `send` of a message whose handler was refused is not a second error),
//! plus the errors. Each macro's output goes through [`emit`].

use proc_macro2::TokenStream;

/// Errors accumulated while checking one item, reported together.
#[derive(Default)]
pub struct Errors(Vec<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many errors so far (to tell whether a check added any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn into_compile_error(self) -> TokenStream {
        let mut iter = self.0.into_iter();
        let Some(mut first) = iter.next() else {
            return TokenStream::new();
        };
        for e in iter {
            first.combine(e);
        }
        first.to_compile_error()
    }
}

/// What a macro emits. With no errors: the expansion. With errors: `item`
/// (the user's item as written, or as far as it could be expanded) and
/// `stubs`, then the errors.
pub fn emit(
    expansion: Result<TokenStream, (TokenStream, TokenStream)>,
    errors: Errors,
) -> TokenStream {
    match expansion {
        Ok(out) if errors.is_empty() => out,
        Ok(out) => {
            let mut out = out;
            out.extend(errors.into_compile_error());
            out
        }
        Err((item, stubs)) => {
            let mut out = item;
            out.extend(stubs);
            out.extend(errors.into_compile_error());
            out
        }
    }
}
