use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[state]
#[derive(Default)]
pub struct Ledger {
    total: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop, ledger: &mut Ledger) -> u64 {
    shop.orders += 1;
    ledger.total += 1;
    shop.orders
}

fn main() {}
