use catga::prelude::*;

#[query(route = key(sku))]
pub enum Lookup {
    BySku { sku: String },
    ById { id: u64 },
}

fn main() {}
