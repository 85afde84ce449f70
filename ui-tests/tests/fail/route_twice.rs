use catga::prelude::*;

#[query(route = leader, route = round_robin)]
pub struct CountOrders;

fn main() {}
