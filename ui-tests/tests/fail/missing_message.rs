use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[handler]
fn place_order(shop: &mut Shop, ctx: &mut CommandContext) -> u64 {
    shop.orders = ctx.log_index();
    shop.orders
}

fn main() {}
