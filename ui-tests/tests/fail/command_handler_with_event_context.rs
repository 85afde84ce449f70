use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop, ctx: EventContext) -> u64 {
    shop.orders = ctx.log_index();
    shop.orders
}

fn main() {}
