use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &Shop) -> u64 {
    shop.orders
}

fn main() {}
