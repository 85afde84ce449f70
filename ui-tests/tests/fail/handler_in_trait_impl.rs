use catga::prelude::*;

#[query]
pub struct Version;

pub trait Handlers {
    fn version(q: Version) -> u32;
}

pub struct Service;

impl Handlers for Service {
    #[handler]
    fn version(_q: Version) -> u32 {
        1
    }
}

fn main() {}
