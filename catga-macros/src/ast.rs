//! Parsing into a small model: a data type (`#[command]`, `#[query]`,
//! `#[event]`, `#[state]`) or a handler function. Only what the item IS is
//! decided here; whether it is allowed is `valid`'s job.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{DeriveInput, FnArg, Item, ItemFn, PatType, Receiver, ReturnType, Type};

/// A struct or enum under a message or state attribute.
pub struct DataType {
    pub input: DeriveInput,
}

/// What an item is, for "goes on a struct, not on X" errors.
pub struct Other {
    pub span: Span,
    pub what: &'static str,
}

/// The item under a data attribute: a data type, a union, or something else.
pub enum DataItem {
    Data(DataType),
    Union(syn::ItemUnion),
    Other(Other),
}

pub fn data_item(item: TokenStream) -> syn::Result<DataItem> {
    Ok(match syn::parse2::<Item>(item)? {
        Item::Struct(s) => DataItem::Data(DataType { input: s.into() }),
        Item::Enum(e) => DataItem::Data(DataType { input: e.into() }),
        Item::Union(u) => DataItem::Union(u),
        other => DataItem::Other(describe(&other)),
    })
}

/// What to call `item` in an error, and the span of its leading keyword.
pub fn describe(item: &Item) -> Other {
    let (span, what) = match item {
        Item::Fn(f) => (f.sig.fn_token.span, "a function"),
        Item::Struct(s) => (s.struct_token.span, "a struct"),
        Item::Enum(e) => (e.enum_token.span, "an enum"),
        Item::Union(u) => (u.union_token.span, "a union"),
        Item::Trait(t) => (t.trait_token.span, "a trait"),
        Item::Impl(i) => (i.impl_token.span, "an impl block"),
        Item::Type(t) => (t.type_token.span, "a type alias"),
        Item::Mod(m) => (m.mod_token.span, "a module"),
        Item::Const(c) => (c.const_token.span, "a const"),
        Item::Static(s) => (s.static_token.span, "a static"),
        Item::Use(u) => (u.use_token.span, "a `use`"),
        other => (other.span(), "this item"),
    };
    Other { span, what }
}

/// A handler function, as written.
pub struct Handler {
    pub func: ItemFn,
    /// The first parameter (the message), if it is a typed one.
    pub msg: Option<PatType>,
    /// A `self` parameter anywhere.
    pub receiver: Option<Receiver>,
    /// The parameters after the message.
    pub params: Vec<PatType>,
    /// The return type (`()` when none is written).
    pub output: Type,
    pub shape: Shape,
}

/// The shape of a handler, read from how it takes its parameters (never
/// from their type names: what each parameter IS is the type system's call,
/// through `CommandParam`, `QueryParam` and `EventParam` in generated code).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    /// A parameter taken by `&mut`: the state a command changes.
    Command,
    /// A parameter taken by `&`: the state a query reads.
    Query,
    /// No parameter after the message, returns a value.
    StatelessQuery,
    /// No borrowed parameter, returns nothing.
    Event,
    /// Parameters after the message, none borrowed, and a return value: an
    /// event handler (e.g. with `ctx: EventContext`) that returns something.
    EventReturning,
}

pub fn handler_item(item: TokenStream) -> syn::Result<Result<Handler, Other>> {
    let func = match syn::parse2::<Item>(item)? {
        Item::Fn(f) => f,
        other => return Ok(Err(describe(&other))),
    };
    let mut receiver = None;
    let mut typed = Vec::new();
    for arg in &func.sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                receiver.get_or_insert_with(|| r.clone());
            }
            FnArg::Typed(pt) => typed.push(pt.clone()),
        }
    }
    let mut typed = typed.into_iter();
    let msg = typed.next();
    let params: Vec<PatType> = typed.collect();
    let output: Type = match &func.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let returns_unit = matches!(&output, Type::Tuple(t) if t.elems.is_empty());
    let by_ref = |mutable: bool| {
        params.iter().any(
            |p| matches!(strip(&p.ty), Type::Reference(r) if r.mutability.is_some() == mutable),
        )
    };
    let shape = if by_ref(true) {
        Shape::Command
    } else if by_ref(false) {
        Shape::Query
    } else if returns_unit {
        Shape::Event
    } else if params.is_empty() {
        Shape::StatelessQuery
    } else {
        Shape::EventReturning
    };
    Ok(Ok(Handler {
        func,
        msg,
        receiver,
        params,
        output,
        shape,
    }))
}

/// `ty` without invisible groups and parentheses.
pub fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => strip(&g.elem),
        Type::Paren(p) => strip(&p.elem),
        other => other,
    }
}
