use catga::prelude::*;

#[derive(Default, Deserialize)]
#[state]
pub struct Shop {
    pub orders: u64,
}

fn main() {}
