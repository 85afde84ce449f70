use catga::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
fn on_order_placed(ctx: EventContext, e: OrderPlaced) {
    let _ = (ctx, e.id);
}

fn main() {}
