use catga::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
}

#[event]
pub struct OrderShipped {
    pub id: u64,
}

#[handler]
fn on_order(placed: OrderPlaced, shipped: OrderShipped) {
    let _ = (placed.id, shipped.id);
}

fn main() {}
