use std::time::Instant;

use catga::prelude::*;

#[command]
pub struct PlaceOrder {
    pub qty: u32,
    pub at: Instant,
}

fn main() {}
