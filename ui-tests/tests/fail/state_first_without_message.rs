use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[handler]
fn count(shop: &Shop, ctx: EventContext) -> u64 {
    let _ = ctx;
    shop.orders
}

fn main() {}
