use catga::prelude::*;

#[event(crate = "not a path")]
pub struct OrderPlaced;

fn main() {}
