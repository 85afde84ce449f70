//! Sync and async event handlers, with and without `EventContext`, several
//! handlers for one event.

use catga::prelude::*;

#[event]
pub struct Shipped {
    pub order: u64,
}

#[handler]
fn log_shipped(e: Shipped) {
    let _ = e.order;
}

#[handler]
fn log_shipped_with_ctx(e: Shipped, ctx: EventContext) {
    let _ = (e.order, ctx.node_id(), ctx.log_index());
}

#[handler]
async fn notify(e: Shipped) {
    let _ = e.order;
}

#[handler]
async fn notify_with_ctx(e: Shipped, ctx: EventContext) -> () {
    tokio::task::yield_now().await;
    let _ = (e.order, ctx.log_index());
}

fn main() {}
