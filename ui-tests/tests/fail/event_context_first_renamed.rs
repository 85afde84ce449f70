// Which parameter is the message is decided by the types, not by how they
// are spelled: a renamed context first is the same one error.
use catga::EventContext as Ctx;
use catga::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
fn on_order_placed(ctx: Ctx, e: OrderPlaced) {
    let _ = (ctx, e.id);
}

fn main() {}
