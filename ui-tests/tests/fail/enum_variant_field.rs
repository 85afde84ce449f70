use std::time::Instant;

use catga::prelude::*;

#[command]
pub enum Order {
    Place { qty: u32 },
    Cancel { at: Instant },
}

fn main() {}
