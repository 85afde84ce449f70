use catga::prelude::*;

#[event]
#[derive(Clone, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub struct OrderPlaced {
    pub id: u64,
}

fn main() {}
