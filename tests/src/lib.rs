//! Shared fixtures for catga's integration tests: a small shop and a
//! key-value register used by the cluster and fault tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use catga::prelude::*;

/// A shop with stock and orders.
#[state(name = "tests.shop")]
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Shop {
    pub stock: BTreeMap<String, u32>,
    pub orders: BTreeMap<u64, (String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub enum ShopError {
    UnknownSku,
    OutOfStock { left: u32 },
}

#[command(name = "tests.Restock")]
pub struct Restock {
    pub sku: String,
    pub qty: u32,
}

#[command(name = "tests.PlaceOrder")]
pub struct PlaceOrder {
    pub sku: String,
    pub qty: u32,
}

#[command(name = "tests.Explode")]
pub struct Explode {
    pub touch_first: bool,
}

#[query(name = "tests.GetStock")]
pub struct GetStock {
    pub sku: String,
}

#[query(name = "tests.CountOrders", linearizable)]
pub struct CountOrders;

#[query(name = "tests.Echo")]
pub struct Echo(pub String);

#[event(name = "tests.OrderPlaced")]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    pub id: u64,
    pub sku: String,
}

#[event(name = "tests.Ping")]
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    pub n: u64,
}

#[handler]
pub fn restock(cmd: Restock, shop: &mut Shop) -> u32 {
    let left = shop.stock.entry(cmd.sku).or_default();
    *left += cmd.qty;
    *left
}

#[handler]
pub fn place_order(
    cmd: PlaceOrder,
    shop: &mut Shop,
    ctx: &mut CommandContext,
) -> Result<u64, ShopError> {
    let left = shop.stock.get_mut(&cmd.sku).ok_or(ShopError::UnknownSku)?;
    if *left < cmd.qty {
        return Err(ShopError::OutOfStock { left: *left });
    }
    *left -= cmd.qty;
    let id = ctx.log_index();
    shop.orders.insert(id, (cmd.sku.clone(), cmd.qty));
    ctx.publish(OrderPlaced { id, sku: cmd.sku });
    Ok(id)
}

#[handler]
pub fn explode(cmd: Explode, shop: &mut Shop, ctx: &mut CommandContext) -> u32 {
    if cmd.touch_first {
        shop.stock.insert("exploded".into(), 1);
    }
    ctx.publish(Ping { n: 0 });
    panic!("boom at {}", ctx.log_index())
}

#[handler]
pub fn get_stock(q: GetStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[handler]
pub fn count_orders(_q: CountOrders, shop: &Shop) -> usize {
    shop.orders.len()
}

#[handler]
pub async fn echo(q: Echo) -> String {
    q.0
}

/// Counts every OrderPlaced seen by any event handler in this process.
pub static ORDERS_SEEN: AtomicU64 = AtomicU64::new(0);
/// Sum of Ping.n seen by the async handler.
pub static PINGS_SEEN: AtomicU64 = AtomicU64::new(0);

#[handler]
pub fn count_order(_e: OrderPlaced) {
    ORDERS_SEEN.fetch_add(1, Ordering::SeqCst);
}

#[handler]
pub async fn on_ping(e: Ping, ctx: EventContext) {
    let _ = ctx.log_index();
    PINGS_SEEN.fetch_add(e.n, Ordering::SeqCst);
}
