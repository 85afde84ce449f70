use catga::prelude::*;

#[query(route = key)]
pub struct GetStock {
    pub sku: String,
}

fn main() {}
