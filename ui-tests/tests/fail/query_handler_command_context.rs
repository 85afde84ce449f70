use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[query]
pub struct CountOrders;

#[handler]
fn count_orders(_q: CountOrders, shop: &Shop, _ctx: &mut CommandContext) -> u64 {
    shop.orders
}

fn main() {}
