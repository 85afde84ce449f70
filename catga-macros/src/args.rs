//! Parsing of attribute arguments: `name = "..."` and bare flags.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, Token};

/// The arguments a catga attribute accepts.
#[derive(Default)]
pub struct Args {
    /// `name = "..."`: the wire name (messages) or snapshot name (states).
    pub name: Option<LitStr>,
    /// `linearizable`: a query read through the leader by default.
    pub linearizable: Option<Span>,
}

/// Which arguments the attribute `attr` allows.
pub struct Allowed {
    pub attr: &'static str,
    pub name: bool,
    pub linearizable: bool,
}

impl Allowed {
    fn expected(&self) -> String {
        let mut v = Vec::new();
        if self.name {
            v.push("`name = \"...\"`");
        }
        if self.linearizable {
            v.push("`linearizable`");
        }
        if v.is_empty() {
            format!("#[{}] takes no arguments", self.attr)
        } else {
            format!("#[{}] accepts {}", self.attr, v.join(" and "))
        }
    }
}

/// Parses `tokens` as a comma-separated list of arguments, reporting every
/// unknown or malformed one.
pub fn parse(tokens: TokenStream, allowed: &Allowed) -> Result<Args, syn::Error> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
    let mut args = Args::default();
    let mut errors = Vec::new();
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if allowed.name && nv.path.is_ident("name") => {
                let lit = match &nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => s.clone(),
                    other => {
                        errors.push(syn::Error::new_spanned(
                            other,
                            "`name` takes a string literal, e.g. `name = \"shop.PlaceOrder\"`",
                        ));
                        continue;
                    }
                };
                let value = lit.value();
                if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    errors.push(syn::Error::new_spanned(
                        &lit,
                        "a name must be non-empty and contain no whitespace",
                    ));
                } else if args.name.is_some() {
                    errors.push(syn::Error::new_spanned(&meta, "`name` is given twice"));
                } else {
                    args.name = Some(lit);
                }
            }
            Meta::Path(p) if allowed.linearizable && p.is_ident("linearizable") => {
                args.linearizable = Some(syn::spanned::Spanned::span(p));
            }
            other => {
                let what = match other.path().get_ident() {
                    Some(id) => format!("unknown argument `{id}`"),
                    None => "unknown argument".to_string(),
                };
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("{what}: {}", allowed.expected()),
                ));
            }
        }
    }
    match crate::fallback::combine(errors) {
        Some(e) => Err(e),
        None => Ok(args),
    }
}
