//! Valid signatures that used to be refused: renamed context imports,
//! explicit lifetimes, `where` clauses, `&'static str` answers, patterns.

use catga::CommandContext as Ctx;
use catga::EventContext as EvCtx;
use catga::prelude::*;
use catga::testing::TestApp;

#[state(name = "ui.classified.shop")]
#[derive(Default)]
pub struct Shop {
    orders: u64,
    name: String,
}

#[command]
pub struct PlaceOrder {
    pub qty: u64,
}

#[command]
pub struct Rename(pub String);

#[query]
pub struct CountOrders;

#[query]
pub struct Name;

#[query]
pub struct Version;

#[query]
pub struct Motto;

#[event]
pub struct OrderPlaced {
    pub total: u64,
}

#[handler]
fn place_order<'s, 'c>(cmd: PlaceOrder, shop: &'s mut Shop, ctx: &'c mut Ctx) -> u64
where
    's: 's,
{
    shop.orders += cmd.qty;
    ctx.publish(OrderPlaced { total: shop.orders });
    shop.orders
}

#[handler]
fn rename(Rename(name): Rename, shop: &mut Shop) {
    shop.name = name;
}

#[handler]
fn count_orders<'a>(_: CountOrders, shop: &'a Shop) -> u64
where
    Shop: Default,
{
    shop.orders
}

#[handler]
fn name(_: Name, shop: &Shop) -> String {
    shop.name.clone()
}

#[handler]
fn version(_: Version) -> &'static str {
    "1.0"
}

#[handler]
async fn motto(_: Motto) -> &'static str {
    "replicate everything"
}

#[handler]
fn on_order_placed(e: OrderPlaced, ctx: EvCtx) {
    let _ = (e.total, ctx.node_id());
}

#[handler]
extern "Rust" fn on_order_placed_too(_: OrderPlaced) {}

#[tokio::main]
async fn main() {
    let mut app = TestApp::new().unwrap();
    assert_eq!(app.send(PlaceOrder { qty: 2 }).await.unwrap(), 2);
    app.send(Rename("corner".into())).await.unwrap();
    assert_eq!(app.send(CountOrders).await.unwrap(), 2);
    assert_eq!(app.send(Name).await.unwrap(), "corner");
    assert_eq!(app.send(Version).await.unwrap(), "1.0");
    assert_eq!(app.send(Motto).await.unwrap(), "replicate everything");
    assert_eq!(app.events::<OrderPlaced>().len(), 1);
}
