use catga::prelude::*;

#[command(linearizable)]
pub struct PlaceOrder;

fn main() {}
