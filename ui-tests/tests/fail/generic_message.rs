use catga::prelude::*;

#[command]
pub struct Put<T> {
    pub value: T,
}

fn main() {}
