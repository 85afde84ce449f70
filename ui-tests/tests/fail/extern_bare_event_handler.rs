use catga::prelude::*;

#[event]
pub struct OrderPlaced;

#[handler]
extern fn on_order_placed(_e: OrderPlaced, _ctx: EventContext) {}

fn main() {}
