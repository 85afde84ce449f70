// The field is reported, once: the handler's `impl Handled` defers
// `Message: Send` (as the message's own impls do), so it adds no error.

use std::rc::Rc;

use catga::prelude::*;

#[query]
pub struct Lookup {
    pub key: Rc<str>,
}

#[handler]
fn lookup(q: Lookup) -> usize {
    q.key.len()
}

fn main() {}
