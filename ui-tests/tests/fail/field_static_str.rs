use catga::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
    pub sku: &'static str,
}

fn main() {}
