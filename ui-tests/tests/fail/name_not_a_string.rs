use catga::prelude::*;

#[event(name = shop::OrderPlaced)]
pub struct OrderPlaced;

fn main() {}
