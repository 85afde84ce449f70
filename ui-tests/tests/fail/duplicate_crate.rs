use catga::prelude::*;

#[command(crate = "catga", crate = "catga")]
pub struct PlaceOrder;

fn main() {}
