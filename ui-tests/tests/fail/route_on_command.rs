use catga::prelude::*;

#[command(route = leader)]
pub struct PlaceOrder {
    pub sku: String,
}

fn main() {}
