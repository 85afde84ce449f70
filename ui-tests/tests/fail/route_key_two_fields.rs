use catga::prelude::*;

#[query(route = key(sku, shop))]
pub struct GetStock {
    pub sku: String,
    pub shop: u32,
}

fn main() {}
