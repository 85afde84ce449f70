use catga::prelude::*;

#[command]
#[derive(Debug, Serialize)]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
