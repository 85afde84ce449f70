// Known weak spot: the field is reported (once), and every handler of the
// message adds one error at its message type, since `Message: Send`.

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
