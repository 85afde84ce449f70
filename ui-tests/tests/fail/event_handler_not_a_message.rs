use catga::prelude::*;

pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
async fn on_order_placed(e: OrderPlaced, ctx: EventContext) {
    let _ = (e.id, ctx);
}

fn main() {}
