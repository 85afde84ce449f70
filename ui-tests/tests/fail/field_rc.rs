use std::rc::Rc;

use catga::prelude::*;

#[query]
pub struct Lookup {
    pub key: Rc<str>,
}

fn main() {}
