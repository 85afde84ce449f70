use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop, qty: u64) -> u64 {
    shop.orders += qty;
    shop.orders
}

fn main() {}
