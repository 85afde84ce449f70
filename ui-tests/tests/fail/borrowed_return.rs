use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    name: String,
}

#[query]
pub struct GetName;

#[handler]
fn get_name(_q: GetName, shop: &Shop) -> &str {
    &shop.name
}

fn main() {}
