//! Two facts rustc does not give an attribute macro, read from the source
//! file around the attribute (`Span::local_file` and `Span::line`):
//!
//! - whether the function under `#[handler]` is a method in an `impl` or
//!   `trait` block (the macro sees the same tokens as for a free function);
//! - whether a `#[derive(Serialize)]` came *before* our attribute (rustc
//!   runs such a derive first and hands us the item without it).
//!
//! Both are best effort: when the file cannot be read (a macro-generated
//! item, no local file) the check is skipped, and the code compiles or fails
//! as it would without it. Neither ever changes the expansion of valid code.

use proc_macro::Span;

use crate::attr::Attr;
use crate::fallback::Errors;

/// The text of the file that `#[...]` is in, and the (1-based) line of the
/// attribute.
fn around_attribute() -> Option<(String, usize)> {
    let span = std::panic::catch_unwind(Span::call_site).ok()?;
    let path = span.local_file()?;
    let line = span.line();
    let text = std::fs::read_to_string(path).ok()?;
    Some((text, line))
}

/// The byte offset where 1-based `line` starts.
fn line_start(text: &str, line: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    if line == 1 {
        return Some(0);
    }
    text.match_indices('\n').nth(line - 2).map(|(i, _)| i + 1)
}

/// An error if the `fn` under `#[handler]` is inside an `impl` or `trait`
/// block.
pub fn not_in_impl_block(sig: &syn::Signature) -> Option<syn::Error> {
    let (text, line) = around_attribute()?;
    let end = line_start(&text, line)?;
    let kind = enclosing_block(&text[..end])?;
    if kind != Block::ImplOrTrait {
        return None;
    }
    Some(syn::Error::new_spanned(
        &sig.ident,
        "#[handler] goes on a free function, not on a method: move this function out of the `impl` block \
         (handlers are free functions, registered by the attribute; a handler reads its state from its `&State` or `&mut State` parameter)",
    ))
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Block {
    ImplOrTrait,
    Other,
}

/// The kind of the innermost `{` block still open at the end of `src`
/// (`None` at module level or when `src` cannot be lexed).
fn enclosing_block(src: &str) -> Option<Block> {
    let mut stack: Vec<Block> = Vec::new();
    // The first item keyword seen since the last `;`, `{` or `}`.
    let mut head: Option<&str> = None;
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'"' => {
                i = skip_string(b, i + 1)?;
                continue;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && !ident_before(b, i) => {
                // raw string r"..." / r#"..."#
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        return None;
                    }
                    if b[j] == b'"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&b'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                i = j;
                continue;
            }
            b'\'' => {
                // a char literal ('x', '\n', '\u{..}') or a lifetime ('a)
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if let Some(ch) = src[i + 1..].chars().next() {
                    let n = ch.len_utf8();
                    if b.get(i + 1 + n) == Some(&b'\'') {
                        i += 2 + n;
                    } else {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
                continue;
            }
            b'{' => {
                let kind = if matches!(head, Some("impl" | "trait")) {
                    Block::ImplOrTrait
                } else {
                    Block::Other
                };
                stack.push(kind);
                head = None;
            }
            b'}' => {
                stack.pop();
                head = None;
            }
            b';' => head = None,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                if head.is_none()
                    && matches!(
                        word,
                        "impl"
                            | "trait"
                            | "fn"
                            | "struct"
                            | "enum"
                            | "union"
                            | "mod"
                            | "let"
                            | "const"
                            | "static"
                            | "match"
                            | "if"
                            | "while"
                            | "for"
                            | "loop"
                            | "async"
                            | "move"
                            | "extern"
                            | "macro_rules"
                    )
                {
                    // `unsafe impl` / `pub impl` : only item keywords count,
                    // `unsafe`/`pub`/`default` are skipped.
                    head = Some(match word {
                        "impl" => "impl",
                        "trait" => "trait",
                        _ => "other",
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    stack.last().copied()
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// The index after the closing quote of a string whose body starts at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// An error if `#[derive(Serialize)]` or `#[derive(Deserialize)]` is among
/// the attributes written above the data attribute: rustc has already run
/// that derive (we never see it), and serde's own impls would clash with
/// ours, or fail to find the `serde` crate.
/// Returns whether it found one.
pub fn no_derive_above(attr: Attr, errors: &mut Errors) -> bool {
    let Some((text, line)) = around_attribute() else {
        return false;
    };
    let Some(end) = line_start(&text, line) else {
        return false;
    };
    // The attributes above: lines up to the end of the previous item.
    let mut above = String::new();
    for l in text[..end].lines().rev() {
        let t = l.trim();
        if t.is_empty() || t.ends_with(';') || t.ends_with('}') || t.ends_with('{') {
            break;
        }
        above.insert_str(0, t);
        above.insert(0, '\n');
    }
    let found: Vec<&str> = ["Serialize", "Deserialize"]
        .into_iter()
        .filter(|w| in_derive(&above, w))
        .collect();
    if found.is_empty() {
        return false;
    }
    errors.push(syn::Error::new(
        proc_macro2::Span::call_site(),
        format!(
            "#[{}] derives Serialize and Deserialize itself (through catga's own serde): remove `{}` from the `#[derive(..)]` above",
            attr.name(),
            found.join("` and `")
        ),
    ));
    true
}

/// Whether `word` appears as a whole word inside a `derive(...)` in `text`.
fn in_derive(text: &str, word: &str) -> bool {
    let mut rest = text;
    while let Some(at) = rest.find("derive") {
        let after = &rest[at + "derive".len()..];
        let Some(open) = after.trim_start().strip_prefix('(') else {
            rest = after;
            continue;
        };
        let inner = open.split(')').next().unwrap_or("");
        if inner
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == word)
        {
            return true;
        }
        rest = after;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_is_inside_an_impl_block() {
        let src = "struct A;\nimpl A {\n    fn f(&self) { let s = \"{\"; }\n    #[handler]\n";
        assert_eq!(enclosing_block(src), Some(Block::ImplOrTrait));
        let src = "unsafe impl<T: Fn() -> u8> Send for X<T> where T: Copy {\n";
        assert_eq!(enclosing_block(src), Some(Block::ImplOrTrait));
    }

    #[test]
    fn a_free_function_is_not() {
        assert_eq!(
            enclosing_block("use a::b;\nfn g() -> impl Fn() { || () }\n"),
            None
        );
        let src = "impl A { fn f() { let c = '{'; 'a: loop {} } }\nmod m {\n";
        assert_eq!(enclosing_block(src), Some(Block::Other));
        let src = "impl A {\n fn f() {\n";
        assert_eq!(enclosing_block(src), Some(Block::Other));
        let src = "/* impl { */ const _: () = {\n";
        assert_eq!(enclosing_block(src), Some(Block::Other));
    }

    #[test]
    fn derives_are_found_by_word() {
        assert!(in_derive("#[derive(Debug, Serialize)]", "Serialize"));
        assert!(in_derive("#[derive(serde::Deserialize)]", "Deserialize"));
        assert!(!in_derive("#[derive(MySerialize)]", "Serialize"));
        assert!(!in_derive(
            "/// Serialize it\n#[derive(Debug)]",
            "Serialize"
        ));
    }
}
