use catga::prelude::*;

#[state]
pub struct Shop {
    orders: u64,
}

fn main() {}
