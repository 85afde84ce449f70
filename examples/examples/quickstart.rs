use std::collections::BTreeMap;
use std::time::Duration;

use catga::prelude::*;

#[state(name = "shop")] // replicated on every node, snapshotted under "shop"
#[derive(Default)]
pub struct Shop {
    stock: BTreeMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize)] // a handler's error travels back to the caller
#[serde(crate = "catga::serde")]
pub enum ShopError {
    UnknownSku,
    OutOfStock,
}

#[command]
pub struct Restock {
    pub sku: String,
    pub qty: u32,
}

#[command]
pub struct PlaceOrder {
    pub sku: String,
    pub qty: u32,
}

#[query]
pub struct GetStock {
    pub sku: String,
}

#[handler] // a write: runs in the replicated state machine, on every node, in log order
fn restock(cmd: Restock, shop: &mut Shop) -> u32 {
    let left = shop.stock.entry(cmd.sku).or_default();
    *left += cmd.qty;
    *left
}

#[handler]
fn place_order(
    cmd: PlaceOrder,
    shop: &mut Shop,
    ctx: &mut CommandContext,
) -> Result<u64, ShopError> {
    let left = shop.stock.get_mut(&cmd.sku).ok_or(ShopError::UnknownSku)?;
    if *left < cmd.qty {
        return Err(ShopError::OutOfStock);
    }
    *left -= cmd.qty;
    Ok(ctx.log_index()) // the order id: the same on every replica
}

#[handler] // a read: runs on the node you ask, from its copy of the state
fn get_stock(q: GetStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[tokio::main]
async fn main() -> catga::Result<()> {
    // catga logs through `tracing`; RUST_LOG=info shows openraft at work too
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();

    // No peer(..): this node is the whole cluster. It elects itself and
    // keeps its log in data/quickstart (run it again: the stock carries on).
    let node = catga::cluster()
        .node_id(1)
        .listen("127.0.0.1:7001")
        .data_dir("data/quickstart")
        .start()
        .await?;
    node.wait_ready(Duration::from_secs(10)).await?;

    let stock = node
        .send(Restock {
            sku: "apple".into(),
            qty: 10,
        })
        .await?;
    println!("restocked: {stock} apples");
    // the outer `?` is the cluster's error, the inner Result the handler's
    let placed: Result<u64, ShopError> = node
        .send(PlaceOrder {
            sku: "apple".into(),
            qty: 3,
        })
        .await?;
    println!("order: {placed:?}");
    let left = node
        .send(GetStock {
            sku: "apple".into(),
        })
        .await?; // a local read
    println!("left: {left:?}");

    node.shutdown().await;
    Ok(())
}
