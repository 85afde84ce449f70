// The field is reported once, not again at the handler that takes the state.
use std::cell::Cell;

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Tally {
    pub hits: Cell<u64>,
}

#[command]
pub struct Hit;

#[handler]
fn hit(_cmd: Hit, tally: &mut Tally) -> u64 {
    tally.hits.set(tally.hits.get() + 1);
    tally.hits.get()
}

fn main() {}
