// Known weak spot, documented instead (catga/docs/command.md, "Do not derive
// Serialize or Deserialize"): a serde derive written ABOVE the catga attribute
// runs first, and rustc hands catga the item without it; no attribute macro
// sees what was written above it, and catga reads no source file, so there is
// no token-level way to tell. The derive fails on its own, with serde's
// "can't find crate for `serde`", once per derived trait. (With
// `#[serde(crate = "catga::serde")]` the leftover helper attribute gives it
// away: one error from catga, see derive_serde_before_command_with_crate.rs.)

use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
#[command]
pub struct PlaceOrder {
    pub qty: u32,
}

fn main() {}
