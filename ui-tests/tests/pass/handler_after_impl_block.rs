//! A free function right after an `impl` block whose braces hide in
//! strings, chars and comments is still a free function.

use catga::prelude::*;

#[query]
pub struct Version;

pub struct Service;

impl Service {
    pub fn brace(&self) -> (&'static str, char) {
        // a lone { in a comment
        /* and { in a block comment */
        ("{", '{')
    }
}

#[handler]
fn version(_: Version) -> u32 {
    let _ = r#"}"#;
    1
}

fn main() {
    let _ = Service.brace();
    let _ = version;
}
