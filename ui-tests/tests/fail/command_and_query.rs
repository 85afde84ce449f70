use catga::prelude::*;

#[command]
#[query]
pub struct CountOrders;

fn main() {}
