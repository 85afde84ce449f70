use catga::prelude::*;

#[query]
pub struct Ping;

#[handler(name = "ping")]
fn ping(_q: Ping) -> u64 {
    1
}

fn main() {}
