use catga::prelude::*;

#[query(route = "leader")]
pub struct CountOrders;

fn main() {}
