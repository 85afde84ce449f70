// Known weak spot: a context taken by value BEFORE the command, in a handler
// that also takes a state. Which parameter is the message is decided by the
// types, and the macro must implement `Handled` for the first parameter's
// type before the type system has said anything: rustc refuses that impl for
// catga's own `CommandContext` (E0117, on the parameter). One error, on the
// right parameter, but in rustc's words.

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(ctx: CommandContext, cmd: PlaceOrder, shop: &mut Shop) -> u64 {
    let _ = (ctx, cmd);
    shop.orders
}

fn main() {}
