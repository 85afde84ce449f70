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
    /// Added to the "unknown argument" error, e.g. where the argument belongs.
    pub hint: &'static str,
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
        let mut text = if v.is_empty() {
            format!("#[{}] takes no arguments", self.attr)
        } else {
            format!("#[{}] accepts {}", self.attr, v.join(" and "))
        };
        if !self.hint.is_empty() {
            text.push_str("; ");
            text.push_str(self.hint);
        }
        text
    }
}

/// Parses `tokens` as a comma-separated list of arguments. Every unknown or
/// malformed argument is pushed to `errors` and otherwise ignored, so that
/// the item is still expanded (one typo, one error).
pub fn parse(tokens: TokenStream, allowed: &Allowed, errors: &mut Vec<syn::Error>) -> Args {
    let mut args = Args::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            return args;
        }
    };
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
            other if allowed.name && other.path().is_ident("name") => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "`name` takes a string literal, e.g. `name = \"shop.PlaceOrder\"`",
                ));
            }
            Meta::Path(p) if allowed.linearizable && p.is_ident("linearizable") => {
                args.linearizable = Some(syn::spanned::Spanned::span(p));
            }
            other if allowed.linearizable && other.path().is_ident("linearizable") => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "`linearizable` takes no value: write `#[query(linearizable)]`",
                ));
            }
            other if other.path().is_ident("linearizable") => {
                errors.push(syn::Error::new_spanned(
                    other,
                    format!(
                        "`linearizable` is for #[query] only (a query that must see every write acknowledged before it); {}",
                        allowed.expected()
                    ),
                ));
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
    args
}
