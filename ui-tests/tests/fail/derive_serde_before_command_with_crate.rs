use catga::prelude::*;

#[derive(Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
#[command]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
