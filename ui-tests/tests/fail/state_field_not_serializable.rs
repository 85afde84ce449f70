use catga::prelude::*;

#[derive(Default)]
pub struct Stock {
    pub left: u32,
}

#[state]
#[derive(Default)]
pub struct Shop {
    pub orders: u64,
    pub stock: Stock,
}

fn main() {}
