use catga::prelude::*;

#[query]
pub struct Version;

#[handler]
extern "system" fn version(_q: Version) -> u32 {
    1
}

fn main() {}
