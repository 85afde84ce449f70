use catga::prelude::*;

#[state(name = "shop.v1", name = "shop.v2")]
#[derive(Default)]
pub struct Shop;

fn main() {}
