use catga::prelude::*;

#[event]
pub struct OrderPlaced;

#[handler]
fn on_order_placed(_e: OrderPlaced) -> Result<(), String> {
    Ok(())
}

fn main() {}
