// The field is reported once: a handler that borrows a #[state] type that is
// not a `State` (reported on its field) adds no error.
use std::rc::Rc;

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    pub names: Rc<Vec<String>>,
}

#[command]
pub struct AddName {
    pub name: String,
}

#[handler]
fn add_name(cmd: AddName, shop: &mut Shop) -> usize {
    let _ = cmd.name;
    shop.names.len()
}

#[query]
pub struct CountNames;

#[handler]
fn count_names(_q: CountNames, shop: &Shop) -> usize {
    shop.names.len()
}

fn main() {}
