use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[query]
pub struct CountOrders;

#[handler]
async fn count_orders(_q: CountOrders, shop: &Shop) -> u64 {
    shop.orders
}

fn main() {}
