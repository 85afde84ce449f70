//! A message may derive `Default` (then it is also a `State`, by the
//! blanket impl): its handlers of every shape still compile.

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
#[derive(Default)]
pub struct PlaceOrder {
    pub qty: u64,
}

#[handler]
fn place_order(cmd: PlaceOrder, shop: &mut Shop, _ctx: &mut CommandContext) -> u64 {
    shop.orders += cmd.qty.max(1);
    shop.orders
}

#[query]
#[derive(Default)]
pub struct CountOrders;

#[handler]
fn count_orders(_q: CountOrders, shop: &Shop) -> u64 {
    shop.orders
}

#[query]
#[derive(Default)]
pub struct Version;

#[handler]
fn version(_q: Version) -> u32 {
    1
}

#[event]
#[derive(Default)]
pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
async fn on_order_placed(e: OrderPlaced, ctx: EventContext) {
    let _ = (e.id, ctx.log_index());
}

#[tokio::main]
async fn main() {
    let mut app = catga::testing::TestApp::new().unwrap();
    assert_eq!(app.send(PlaceOrder::default()).await.unwrap(), 1);
    assert_eq!(app.send(CountOrders).await.unwrap(), 1);
    assert_eq!(app.send(Version).await.unwrap(), 1);
}
