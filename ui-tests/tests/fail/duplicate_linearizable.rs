use catga::prelude::*;

#[query(linearizable, linearizable)]
pub struct CountOrders;

fn main() {}
