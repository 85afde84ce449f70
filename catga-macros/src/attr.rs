//! The attribute arguments: `name = "..."`, `linearizable`, `route = ...`,
//! `crate = "..."`.
//! Unknown, malformed and duplicated arguments are reported, each on its own
//! tokens, and otherwise ignored (the item is still expanded: one typo, one
//! error).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, Path, Token};

use crate::fallback::Errors;

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    Command,
    Query,
    Event,
    State,
    Handler,
}

impl Attr {
    pub fn name(self) -> &'static str {
        match self {
            Attr::Command => "command",
            Attr::Query => "query",
            Attr::Event => "event",
            Attr::State => "state",
            Attr::Handler => "handler",
        }
    }

    fn takes_name(self) -> bool {
        self != Attr::Handler
    }

    fn takes_linearizable(self) -> bool {
        self == Attr::Query
    }

    /// What the attribute accepts, for the "unknown argument" error.
    fn expected(self) -> String {
        let mut v = Vec::new();
        if self.takes_name() {
            v.push("`name = \"...\"`");
        }
        if self.takes_linearizable() {
            v.push("`linearizable`");
            v.push("`route = ...`");
        }
        v.push("`crate = \"...\"`");
        let mut text = format!("#[{}] accepts {}", self.name(), v.join(", "));
        if self == Attr::Handler {
            text.push_str(
                "; set a wire name on the message type instead, e.g. `#[command(name = \"shop.PlaceOrder\")]`",
            );
        }
        text
    }
}

/// The parsed arguments.
pub struct Args {
    /// `name = "..."`: the wire name (messages) or snapshot name (states).
    pub name: Option<LitStr>,
    /// `linearizable`: a query read through the leader by default.
    pub linearizable: Option<Span>,
    /// `route = ...`: which node answers a query.
    pub route: Option<Route>,
    /// `crate = "..."`: the path of the catga crate (default `::catga`).
    krate: Option<Path>,
}

/// The value of `route = ...` on a `#[query]`.
pub enum Route {
    Local,
    Leader,
    RoundRobin,
    LeastLoaded,
    /// `key(field)`: the field (a name, or an index for a tuple struct).
    Key(syn::Member),
}

const ROUTES: &str = "`route` is one of `local` (the default), `leader`, `round_robin`, `least_loaded`, or `key(field)` with a field of the query, e.g. `#[query(route = key(sku))]`";

impl Args {
    /// The path generated code names the runtime by: `::catga` unless
    /// `crate = "..."` renames it.
    pub fn krate(&self) -> TokenStream {
        match &self.krate {
            Some(p) => p.to_token_stream(),
            None => quote!(::catga),
        }
    }

    /// The same path as a string, for `#[serde(crate = "...")]`.
    pub fn krate_string(&self) -> String {
        match &self.krate {
            Some(p) => p.to_token_stream().to_string().replace(' ', ""),
            None => "::catga".to_string(),
        }
    }
}

/// Parses `tokens` as a comma-separated list of arguments of `attr`.
pub fn parse(tokens: TokenStream, attr: Attr, errors: &mut Errors) -> Args {
    let mut args = Args {
        name: None,
        linearizable: None,
        route: None,
        krate: None,
    };
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            return args;
        }
    };
    for meta in metas {
        let path = meta.path();
        if path.is_ident("name") && attr.takes_name() {
            name(&meta, &mut args, errors);
        } else if path.is_ident("linearizable") && attr.takes_linearizable() {
            match &meta {
                Meta::Path(p) if args.linearizable.is_some() => errors.push(
                    syn::Error::new_spanned(p, "`linearizable` is given twice: write it once"),
                ),
                Meta::Path(p) => args.linearizable = Some(syn::spanned::Spanned::span(p)),
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "`linearizable` takes no value: write `#[query(linearizable)]`",
                )),
            }
        } else if path.is_ident("route") && attr.takes_linearizable() {
            route(&meta, &mut args, errors);
        } else if path.is_ident("route") {
            errors.push(syn::Error::new_spanned(
                &meta,
                format!(
                    "`route` is for #[query] only (commands go through the leader, events to every node); {}",
                    attr.expected()
                ),
            ));
        } else if path.is_ident("crate") {
            krate(&meta, &mut args, errors);
        } else if path.is_ident("linearizable") {
            errors.push(syn::Error::new_spanned(
                &meta,
                format!(
                    "`linearizable` is for #[query] only (a query that must see every write acknowledged before it); {}",
                    attr.expected()
                ),
            ));
        } else {
            let what = match path.get_ident() {
                Some(id) => format!("unknown argument `{id}`"),
                None => "unknown argument".to_string(),
            };
            errors.push(syn::Error::new_spanned(
                &meta,
                format!("{what}: {}", attr.expected()),
            ));
        }
    }
    args
}

fn string_value<'a>(meta: &'a Meta, example: &str, errors: &mut Errors) -> Option<&'a LitStr> {
    let what = meta
        .path()
        .get_ident()
        .map_or_else(String::new, ToString::to_string);
    match meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s),
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    format!("`{what}` takes a string literal, e.g. `{what} = \"{example}\"`"),
                ));
                None
            }
        },
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!("`{what}` takes a string literal, e.g. `{what} = \"{example}\"`"),
            ));
            None
        }
    }
}

fn name(meta: &Meta, args: &mut Args, errors: &mut Errors) {
    let Some(lit) = string_value(meta, "shop.PlaceOrder", errors) else {
        return;
    };
    let value = lit.value();
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.push(syn::Error::new_spanned(
            lit,
            "a name must be non-empty and contain no whitespace",
        ));
    } else if args.name.is_some() {
        errors.push(syn::Error::new_spanned(
            meta,
            "`name` is given twice: write it once",
        ));
    } else {
        args.name = Some(lit.clone());
    }
}

fn krate(meta: &Meta, args: &mut Args, errors: &mut Errors) {
    let Some(lit) = string_value(meta, "my_catga", errors) else {
        return;
    };
    match lit.parse::<Path>() {
        Ok(_) if args.krate.is_some() => errors.push(syn::Error::new_spanned(
            meta,
            "`crate` is given twice: write it once",
        )),
        Ok(p) => args.krate = Some(p),
        Err(_) => errors.push(syn::Error::new_spanned(
            lit,
            "`crate` takes the path of the catga crate as a string, e.g. `crate = \"my_catga\"`",
        )),
    }
}

fn route(meta: &Meta, args: &mut Args, errors: &mut Errors) {
    let Meta::NameValue(nv) = meta else {
        errors.push(syn::Error::new_spanned(meta, ROUTES));
        return;
    };
    let parsed = match &nv.value {
        Expr::Path(p) if p.qself.is_none() => match p.path.get_ident().map(|i| i.to_string()) {
            Some(id) if id == "local" => Ok(Route::Local),
            Some(id) if id == "leader" => Ok(Route::Leader),
            Some(id) if id == "round_robin" => Ok(Route::RoundRobin),
            Some(id) if id == "least_loaded" => Ok(Route::LeastLoaded),
            Some(id) if id == "key" => Err(syn::Error::new_spanned(
                p,
                "`route = key` needs the field to hash: write `route = key(field)`, e.g. `#[query(route = key(sku))]`",
            )),
            _ => Err(syn::Error::new_spanned(
                p,
                format!("unknown route: {ROUTES}"),
            )),
        },
        Expr::Call(call) => {
            let is_key = matches!(&*call.func, Expr::Path(p) if p.path.is_ident("key"));
            if !is_key {
                Err(syn::Error::new_spanned(
                    &call.func,
                    format!("unknown route: {ROUTES}"),
                ))
            } else if call.args.len() != 1 {
                Err(syn::Error::new_spanned(
                    &call.args,
                    "`key(...)` takes exactly one field of the query, e.g. `route = key(sku)`",
                ))
            } else {
                let field = match &call.args[0] {
                    Expr::Path(p) if p.qself.is_none() => p.path.get_ident().cloned(),
                    _ => None,
                };
                match (&call.args[0], field) {
                    (_, Some(id)) => Ok(Route::Key(syn::Member::Named(id))),
                    (
                        Expr::Lit(ExprLit {
                            lit: Lit::Int(i), ..
                        }),
                        None,
                    ) => match i.base10_parse::<u32>() {
                        Ok(n) => Ok(Route::Key(syn::Member::Unnamed(syn::Index {
                            index: n,
                            span: i.span(),
                        }))),
                        Err(e) => Err(e),
                    },
                    (other, None) => Err(syn::Error::new_spanned(
                        other,
                        "`key(...)` takes the name of a field of the query (or its index in a tuple struct), e.g. `route = key(sku)`",
                    )),
                }
            }
        }
        other => Err(syn::Error::new_spanned(other, ROUTES)),
    };
    match parsed {
        Ok(_) if args.route.is_some() => errors.push(syn::Error::new_spanned(
            meta,
            "`route` is given twice: write it once",
        )),
        Ok(r) => args.route = Some(r),
        Err(e) => errors.push(e),
    }
}
