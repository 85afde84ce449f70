use std::rc::Rc;

use catga::prelude::*;

#[query]
pub struct Lookup;

async fn fetch() -> u64 {
    1
}

#[handler]
async fn lookup(_q: Lookup) -> u64 {
    let cache = Rc::new(0);
    let n = fetch().await;
    n + *cache
}

fn main() {}
