use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(shop: &mut Shop, _cmd: PlaceOrder) -> u64 {
    shop.orders += 1;
    shop.orders
}

fn main() {}
