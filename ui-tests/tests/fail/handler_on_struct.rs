use catga::prelude::*;

#[handler]
pub struct PlaceOrder;

fn main() {}
