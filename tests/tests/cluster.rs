//! Real 3-node clusters on 127.0.0.1: replication, forwarding, queries,
//! events, failover, restart, snapshots, membership, security.

use catga::{Consistency, Role};
use catga_tests::harness::Cluster;
use catga_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_followers_forward() {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = c.follower().await;
    assert_eq!(c.node(leader).send(Restock { sku: "apple".into(), qty: 10 }).await.unwrap(), 10);
    // a follower forwards to the leader
    let id = c
        .node(follower)
        .send(PlaceOrder { sku: "apple".into(), qty: 3 })
        .await
        .unwrap()
        .unwrap();
    assert!(id > 0);
    assert_eq!(
        c.node(follower).send(PlaceOrder { sku: "apple".into(), qty: 30 }).await.unwrap(),
        Err(ShopError::OutOfStock { left: 7 })
    );
    // linearizable read on a follower sees the write
    for n in c.up() {
        assert_eq!(n.query(GetStock { sku: "apple".into() }, Consistency::Linearizable).await.unwrap(), Some(7));
        assert_eq!(n.send(CountOrders).await.unwrap(), 1, "CountOrders is linearizable by type");
    }
    c.assert_replicas_equal().await;
    // local reads on every node once applied
    for n in c.up() {
        assert_eq!(n.send(GetStock { sku: "apple".into() }).await.unwrap(), Some(7));
    }
    let h = c.node(leader).health();
    assert_eq!(h.role, Role::Leader);
    assert_eq!(h.members, vec![1, 2, 3]);
    assert!(h.ready);
    c.shutdown().await;
}
