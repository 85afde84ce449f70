//! The four handler shapes against one state: command, query, stateless
//! query and event.

use std::collections::BTreeMap;

use catga::prelude::*;

#[state(name = "ui.shop")]
#[derive(Default)]
pub struct Shop {
    stock: BTreeMap<String, u32>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub enum ShopError {
    UnknownSku,
    OutOfStock { left: u32 },
}

#[command]
pub struct Restock {
    pub sku: String,
    pub qty: u32,
}

#[command]
pub struct Take {
    pub sku: String,
    pub qty: u32,
}

#[query]
pub struct GetStock {
    pub sku: String,
}

#[query]
pub struct Version;

#[event]
pub struct Taken {
    pub sku: String,
}

#[handler]
fn restock(cmd: Restock, shop: &mut Shop) -> u32 {
    let left = shop.stock.entry(cmd.sku).or_default();
    *left += cmd.qty;
    *left
}

#[handler]
fn take(cmd: Take, shop: &mut Shop, ctx: &mut CommandContext) -> Result<u32, ShopError> {
    let left = shop.stock.get_mut(&cmd.sku).ok_or(ShopError::UnknownSku)?;
    if *left < cmd.qty {
        return Err(ShopError::OutOfStock { left: *left });
    }
    *left -= cmd.qty;
    ctx.publish(Taken { sku: cmd.sku });
    Ok(*left)
}

#[handler]
fn get_stock(q: GetStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[handler]
fn version(_: Version) -> String {
    "1".to_string()
}

#[handler]
fn on_taken(e: Taken) {
    let _ = e.sku;
}

/// Messages named by path.
pub mod msgs {
    use catga::prelude::*;

    #[command]
    pub struct Clear;

    #[query]
    pub struct Skus;
}

#[handler]
fn clear(_: msgs::Clear, shop: &mut Shop, _ctx: &mut CommandContext) -> usize {
    let n = shop.stock.len();
    shop.stock.clear();
    n
}

#[handler]
fn skus(_: msgs::Skus, shop: &Shop) -> Vec<String> {
    shop.stock.keys().cloned().collect()
}

fn main() {}
