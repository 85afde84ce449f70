use catga::prelude::*;

#[command(nme = "shop.PlaceOrder")]
pub struct PlaceOrder;

fn main() {}
