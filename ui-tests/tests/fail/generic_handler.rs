use catga::prelude::*;

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order<S: Default>(_cmd: PlaceOrder, _state: &mut S) -> u64 {
    0
}

fn main() {}
