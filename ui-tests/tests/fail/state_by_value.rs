use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, mut shop: Shop) -> u64 {
    shop.orders += 1;
    shop.orders
}

fn main() {}
