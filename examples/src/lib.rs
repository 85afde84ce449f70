//! The domain shared by catga's examples: a small shop.

use std::collections::BTreeMap;

use catga::prelude::*;

pub mod launcher;
pub mod static_node;

/// The replicated state: stock per SKU and the orders placed.
#[state(name = "shop")]
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Shop {
    pub stock: BTreeMap<String, u32>,
    /// order id (the log index) → (client reference, sku, qty)
    pub orders: BTreeMap<u64, Order>,
}

/// One order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub struct Order {
    pub reference: u64,
    pub sku: String,
    pub qty: u32,
}

/// Why an order was refused: returned to the caller, the same on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub enum ShopError {
    UnknownSku,
    OutOfStock { left: u32 },
}

/// Adds stock (a replicated write).
#[command(name = "shop.Restock")]
pub struct Restock {
    pub sku: String,
    pub qty: u32,
}

/// Places an order (a replicated write).
#[command(name = "shop.PlaceOrder")]
pub struct PlaceOrder {
    pub reference: u64,
    pub sku: String,
    pub qty: u32,
}

/// Reads the stock of a SKU (a local read).
#[query(name = "shop.GetStock")]
pub struct GetStock {
    pub sku: String,
}

/// Reads one order.
#[query(name = "shop.GetOrder")]
pub struct GetOrder {
    pub id: u64,
}

/// Counts the orders (always linearizable).
#[query(name = "shop.CountOrders", linearizable)]
pub struct CountOrders;

/// Published when an order is placed; handled on every node.
#[event(name = "shop.OrderPlaced")]
#[derive(Debug, Clone)]
pub struct OrderPlaced {
    pub id: u64,
    pub sku: String,
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
    let id = ctx.log_index(); // deterministic on every replica
    shop.orders.insert(
        id,
        Order {
            reference: cmd.reference,
            sku: cmd.sku.clone(),
            qty: cmd.qty,
        },
    );
    ctx.publish(OrderPlaced { id, sku: cmd.sku });
    Ok(id)
}

#[handler]
pub fn get_stock(q: GetStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[handler]
pub fn get_order(q: GetOrder, shop: &Shop) -> Option<Order> {
    shop.orders.get(&q.id).cloned()
}

#[handler]
pub fn count_orders(_: CountOrders, shop: &Shop) -> usize {
    shop.orders.len()
}

#[handler]
pub async fn log_order(e: OrderPlaced, ctx: EventContext) {
    tracing::debug!(node = ctx.node_id(), id = e.id, sku = %e.sku, "order placed");
}

/// The key-value domain used by the load generator (`examples/bench.rs`).
pub mod kv {
    use std::collections::HashMap;

    use catga::prelude::*;

    /// A replicated map.
    #[state(name = "bench.kv")]
    #[derive(Default)]
    pub struct Kv {
        pub map: HashMap<u64, u64>,
    }

    /// Sets a key; returns the previous value.
    #[command(name = "bench.Put")]
    pub struct Put {
        pub key: u64,
        pub value: u64,
    }

    /// Reads a key locally.
    #[query(name = "bench.Get")]
    pub struct Get {
        pub key: u64,
    }

    #[handler]
    pub fn put(cmd: Put, kv: &mut Kv) -> Option<u64> {
        kv.map.insert(cmd.key, cmd.value)
    }

    #[handler]
    pub fn get(q: Get, kv: &Kv) -> Option<u64> {
        kv.map.get(&q.key).copied()
    }
}
