use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    name: String,
}

#[query]
pub struct GetName;

#[handler]
fn get_name<'a>(_q: GetName, shop: &'a Shop) -> &'a str {
    &shop.name
}

fn main() {}
