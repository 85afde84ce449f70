use catga::prelude::*;

#[query]
pub struct Ping;

#[handler]
fn ping(_q: Ping) {}

fn main() {}
