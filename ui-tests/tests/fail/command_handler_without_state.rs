use catga::prelude::*;

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder) -> u64 {
    1
}

fn main() {}
