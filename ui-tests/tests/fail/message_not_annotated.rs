use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

pub struct PlaceOrder {
    pub qty: u64,
}

#[handler]
fn place_order(cmd: PlaceOrder, shop: &mut Shop) -> u64 {
    shop.orders += cmd.qty;
    shop.orders
}

fn main() {}
