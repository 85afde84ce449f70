use catga::prelude::*;

#[command]
fn place_order() {}

fn main() {}
