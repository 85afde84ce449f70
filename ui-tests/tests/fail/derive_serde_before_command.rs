// Known weak spot: a serde derive written ABOVE the catga attribute runs
// first (rustc hands catga the item without it) and, without
// `#[serde(crate = "catga::serde")]`, fails with "can't find crate for `serde`"
// before catga can say anything. catga adds the one error that says what
// to do; the E0463 errors are serde's and cannot be suppressed from here.

use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
#[command]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
