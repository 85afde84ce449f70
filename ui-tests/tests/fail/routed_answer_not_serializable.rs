use catga::prelude::*;

#[query(route = round_robin)]
pub struct Snapshot;

pub struct Handle(u32);

#[handler]
fn snapshot(_q: Snapshot) -> Handle {
    Handle(1)
}

fn main() {}
