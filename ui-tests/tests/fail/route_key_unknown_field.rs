use catga::prelude::*;

#[query(route = key(skuu))]
pub struct GetStock {
    pub sku: String,
}

fn main() {}
