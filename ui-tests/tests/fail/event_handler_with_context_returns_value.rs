use catga::prelude::*;

#[event]
pub struct OrderPlaced;

#[handler]
async fn on_order_placed(_e: OrderPlaced, ctx: EventContext) -> u64 {
    ctx.log_index()
}

fn main() {}
