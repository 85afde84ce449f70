//! `send`, `query` and `publish` on a `Node` accept what they should (this
//! only needs to compile; the cluster tests run them).

use catga::prelude::*;

#[state(name = "ui.node_calls.shop")]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[query(linearizable)]
pub struct CountOrders;

#[query]
pub struct Version;

#[event]
pub struct Opened;

#[handler]
fn place_order(_: PlaceOrder, shop: &mut Shop) -> u64 {
    shop.orders += 1;
    shop.orders
}

#[handler]
fn count_orders(_: CountOrders, shop: &Shop) -> u64 {
    shop.orders
}

#[handler]
async fn version(_: Version) -> String {
    "1".into()
}

async fn run(node: &catga::Node) -> catga::Result<()> {
    let _: u64 = node.send(PlaceOrder).await?;
    let _: u64 = node.send(CountOrders).await?;
    let _: u64 = node.query(CountOrders, Consistency::Local).await?;
    let _: String = node.query(Version, Consistency::Linearizable).await?;
    node.publish(Opened).await?;
    Ok(())
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let _ = run;
    // the futures stay `Send`, so they can be spawned
    let _ = |node: &'static catga::Node| assert_send(run(node));
}
