use catga::prelude::*;

#[command]
pub struct Rename<'a> {
    pub name: &'a str,
}

fn main() {}
