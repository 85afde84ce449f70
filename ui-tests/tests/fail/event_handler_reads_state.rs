use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[event]
pub struct OrderPlaced;

#[handler]
fn on_order_placed(_e: OrderPlaced, shop: &Shop) {
    let _ = shop.orders;
}

fn main() {}
