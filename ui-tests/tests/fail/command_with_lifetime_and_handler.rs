// The lifetime is reported once, on the command: the refused type gets
// stand-in impls, so its handler adds no error.
use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    renames: u64,
}

#[command]
pub struct Rename<'a> {
    pub name: &'a str,
}

#[handler]
fn rename(cmd: Rename<'static>, shop: &mut Shop) -> usize {
    shop.renames += 1;
    cmd.name.len()
}

fn main() {}
