use catga::prelude::*;

#[command]
pub union PlaceOrder {
    qty: u32,
    weight: f32,
}

fn main() {}
