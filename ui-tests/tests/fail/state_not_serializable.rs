use catga::prelude::*;

#[derive(Default)]
pub struct NotSerde {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, state: &mut NotSerde) -> u64 {
    state.orders += 1;
    state.orders
}

fn main() {}
