//! Outcomes are stated (issue 10, item 7): every error says whether the
//! command was applied, and a caller-chosen idempotency key makes a retry
//! from any node or process exactly-once, returning the first response.

use std::time::Duration;

use catga::{Error, Outcome};
use catga_tests::harness::Cluster;
use catga_tests::{GetStock, PlaceOrder, Restock};

fn stock(c: &Cluster, id: u64) -> Option<u32> {
    c.node(id)
        .read_state::<catga_tests::Shop, _>(|s| s.stock.get("pear").copied())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_retry_from_any_node_applies_once_and_returns_the_first_response() {
    let mut c = Cluster::start(3).await;
    c.leader().await;
    c.node(1)
        .send(Restock {
            sku: "pear".into(),
            qty: 10,
        })
        .await
        .unwrap();
    let order = || PlaceOrder {
        sku: "pear".into(),
        qty: 1,
    };
    let first = c.node(1).send_keyed("order-42", order()).await.unwrap();
    let id = first.clone().expect("the order is placed");
    // the same key from other nodes (other clients): the first response,
    // not a second order
    for n in [2, 3, 1] {
        assert_eq!(
            c.node(n).send_keyed("order-42", order()).await.unwrap(),
            first
        );
    }
    // another key is another command
    let other = c.node(2).send_keyed("order-43", order()).await.unwrap();
    assert_ne!(other, first);
    let left = c
        .node(1)
        .query(
            GetStock { sku: "pear".into() },
            catga::Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(left, Some(8), "two keys, two orders");
    // the keys are in the snapshot: a node restored from it still knows them
    for n in 1..=3 {
        c.node(n).snapshot().await.unwrap();
    }
    c.kill(3).await;
    c.restart(3).await.unwrap();
    c.node(3).wait_ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        c.node(3).send_keyed("order-42", order()).await.unwrap(),
        Ok(id)
    );
    c.assert_replicas_equal().await;
    assert_eq!(stock(&c, 3), Some(8));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_states_whether_the_command_was_applied() {
    let mut c = Cluster::start_opts(3, 10_000, Duration::from_millis(600)).await;
    c.leader().await;
    // refused before anything is sent
    let bad_key = c
        .node(1)
        .send_keyed(
            "",
            Restock {
                sku: "pear".into(),
                qty: 1,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(bad_key, Error::Config { .. }), "{bad_key}");
    assert_eq!(bad_key.outcome(), Outcome::NotApplied);
    // no majority: the call gives up without an answer, so it may apply later
    c.kill(2).await;
    c.kill(3).await;
    let lost = c
        .node(1)
        .send(Restock {
            sku: "pear".into(),
            qty: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(lost, Error::Timeout { .. }), "{lost}");
    assert_eq!(lost.outcome(), Outcome::Unknown);
    let node = c.node(1).clone();
    c.kill(1).await;
    let down = node
        .send(Restock {
            sku: "pear".into(),
            qty: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(down.outcome(), Outcome::Unknown, "{down}");
    assert_eq!(Error::Overloaded.outcome(), Outcome::NotApplied);
}
