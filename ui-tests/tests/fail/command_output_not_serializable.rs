use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

pub struct Receipt {
    pub id: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop) -> Receipt {
    shop.orders += 1;
    Receipt { id: shop.orders }
}

fn main() {}
