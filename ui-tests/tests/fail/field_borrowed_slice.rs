use catga::prelude::*;

#[command]
pub enum Tag {
    Set { labels: Vec<&'static [u8]> },
    Clear,
}

fn main() {}
