//! Routes declared on query types: every kind, a key on a named and on a
//! tuple field, and a local query whose answer cannot leave its node.

use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    pub stock: std::collections::BTreeMap<String, u32>,
}

#[query(route = local)]
pub struct Here;
#[query(route = leader, linearizable)]
pub struct OnLeader;
#[query(route = round_robin)]
pub struct Around;
#[query(route = least_loaded)]
pub struct Lightest;
#[query(route = key(sku))]
pub struct BySku {
    pub sku: String,
}
#[query(name = "shop.ByTuple", route = key(0))]
pub struct ByTuple(pub u64, pub String);

/// Not Serialize: fine for a local query.
pub struct Opaque(pub u32);

#[handler]
fn here(_q: Here) -> Opaque {
    Opaque(1)
}
#[handler]
fn on_leader(_q: OnLeader, shop: &Shop) -> usize {
    shop.stock.len()
}
#[handler]
async fn around(_q: Around) -> String {
    "x".into()
}
#[handler]
fn lightest(_q: Lightest) -> u32 {
    1
}
#[handler]
fn by_sku(q: BySku, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}
#[handler]
fn by_tuple(q: ByTuple) -> u64 {
    q.0
}

#[allow(dead_code)]
async fn calls(node: catga::Node) -> catga::Result<()> {
    let _: Opaque = node.send(Here).await?;
    let _: usize = node.send(OnLeader).await?;
    let _: String = node.send(Around).await?;
    let _: u32 = node.query(Lightest, catga::Consistency::Local).await?;
    let _: Option<u32> = node.send(BySku { sku: "a".into() }).await?;
    let _: u64 = node.send_to(2, ByTuple(1, "b".into())).await?;
    let _: Vec<catga::members::Member> = node.members();
    let _: Vec<catga::members::Delivery> = node.broadcast(Ping).await?;
    Ok(())
}

#[event]
pub struct Ping;

fn main() {
    assert!(matches!(
        <BySku as catga::Query>::ROUTING,
        catga::Routing::Key(_)
    ));
    assert!(matches!(
        <Here as catga::Query>::ROUTING,
        catga::Routing::Local
    ));
    if let catga::Routing::Key(k) = <BySku as catga::Query>::ROUTING {
        // the same key for the same value, every time
        assert_eq!(k(&BySku { sku: "a".into() }), k(&BySku { sku: "a".into() }));
        assert_ne!(k(&BySku { sku: "a".into() }), k(&BySku { sku: "b".into() }));
    }
}
