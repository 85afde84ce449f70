//! What to emit when expansion fails: each macro's `expand` emits the
//! user's item unchanged (or as far as it could be expanded) plus the errors,
//! so that the rest of their crate still type-checks against it.

/// Folds a list of errors into one (reported together), or `None`.
pub fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    let mut iter = errors.into_iter();
    let mut first = iter.next()?;
    for e in iter {
        first.combine(e);
    }
    Some(first)
}
