// Known weak spot: a serde derive written ABOVE the catga attribute runs
// first (rustc hands catga the item without it) and, without
// `#[serde(crate = "catga::serde")]`, fails with "can't find crate for `serde`"
// (one per derived trait). No trace of it reaches catga (it reads no source
// file), so these E0463 errors, serde's own, are all the user sees.

use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
#[command]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
