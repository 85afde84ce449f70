use catga::prelude::*;

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, ctx: &mut CommandContext) -> u64 {
    ctx.log_index()
}

fn main() {}
