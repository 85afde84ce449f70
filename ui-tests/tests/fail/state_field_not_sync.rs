use std::cell::Cell;

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    pub hits: Cell<u64>,
}

fn main() {}
