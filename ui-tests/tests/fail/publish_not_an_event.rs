use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop, ctx: &mut CommandContext) -> u64 {
    shop.orders += 1;
    ctx.publish(OrderPlaced { id: shop.orders });
    shop.orders
}

fn main() {}
