use std::rc::Rc;

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    pub names: Rc<Vec<String>>,
}

fn main() {}
