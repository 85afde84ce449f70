use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[command]
pub struct Restock;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop, ctx: &mut CommandContext) -> u64 {
    shop.orders += 1;
    ctx.publish(Restock);
    shop.orders
}

fn main() {}
