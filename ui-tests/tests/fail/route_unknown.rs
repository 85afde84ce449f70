use catga::prelude::*;

#[query(route = random)]
pub struct Pick;

fn main() {}
