use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
#[command]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
