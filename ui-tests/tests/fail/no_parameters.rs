use catga::prelude::*;

#[handler]
fn place_order() -> u64 {
    0
}

fn main() {}
