//! The distributed mediator on in-process 3-node clusters (issue 13):
//! members and their liveness, `send_to` with typed answers and errors,
//! queries routed by the route their type declares, and `broadcast` next
//! to `publish`. Process faults (`kill -9` mid-call) and the routes'
//! distributions are in `mediator_processes.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use catga::members::{Liveness, Member, MemberRole};
use catga::prelude::*;
use catga::{Error, Node, Outcome};
use catga_tests::harness::{Cluster, T};
use catga_tests::{Echo, GetStock, Restock, Shop};

#[query(name = "mediator_test.StockByKey", route = key(sku))]
pub struct StockByKey {
    pub sku: String,
}

#[handler]
fn stock_by_key(q: StockByKey, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[query(name = "mediator_test.EchoAround", route = round_robin)]
pub struct EchoAround(pub String);

#[handler]
async fn echo_around(q: EchoAround) -> String {
    q.0
}

#[query(name = "mediator_test.LeaderStock", route = leader, linearizable)]
pub struct LeaderStock {
    pub sku: String,
}

#[handler]
fn leader_stock(q: LeaderStock, shop: &Shop) -> Option<u32> {
    shop.stock.get(&q.sku).copied()
}

#[query(name = "mediator_test.Lightest", route = least_loaded)]
pub struct Lightest;

#[handler]
fn lightest(_q: Lightest, shop: &Shop) -> usize {
    shop.stock.len()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub enum Refusal {
    NotHere { sku: String },
}

#[query(name = "mediator_test.MustExist")]
pub struct MustExist {
    pub sku: String,
}

#[handler]
fn must_exist(q: MustExist, shop: &Shop) -> Result<u32, Refusal> {
    shop.stock
        .get(&q.sku)
        .copied()
        .ok_or(Refusal::NotHere { sku: q.sku })
}

static WAVES: AtomicU64 = AtomicU64::new(0);

#[event(name = "mediator_test.Wave")]
pub struct Wave {
    pub n: u64,
}

#[handler]
fn on_wave(e: Wave, ctx: EventContext) {
    assert_eq!(
        ctx.log_index(),
        0,
        "a broadcast does not go through the log"
    );
    WAVES.fetch_add(e.n, Ordering::SeqCst);
}

/// Waits until `node` sees the members as `pred` wants.
async fn wait_members(node: &Node, what: &str, pred: impl Fn(&[Member]) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = node.members();
        if pred(&m) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never saw {what}: {m:#?}",
            node.id()
        );
        // liveness moves with the heartbeat (4 per second), not with the
        // Raft view: re-check on a change or every 100 ms
        node.health_changed(Duration::from_millis(100)).await;
    }
}

fn all_alive(m: &[Member]) -> bool {
    m.len() == 3 && m.iter().all(|m| m.liveness == Liveness::Alive)
}

async fn restocked(c: &Cluster, sku: &str, qty: u32) {
    c.node(1)
        .send(Restock {
            sku: sku.into(),
            qty,
        })
        .await
        .unwrap();
    c.assert_replicas_equal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_every_node_with_its_role_liveness_and_metadata() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    c.node(2)
        .set_metadata(BTreeMap::from([("zone".to_string(), "b".to_string())]));
    for n in c.up() {
        wait_members(n, "three alive members, node 2 in zone b", |m| {
            all_alive(m) && m[1].metadata.get("zone").map(String::as_str) == Some("b")
        })
        .await;
        let m = n.members();
        assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        for x in &m {
            let want = if x.id == l {
                MemberRole::Leader
            } else {
                MemberRole::Follower
            };
            assert_eq!(x.role, want, "{x:?}");
            assert_eq!(x.addr, c.addrs[x.id as usize - 1]);
        }
        let me = n.info();
        assert_eq!(me.id, n.id());
        assert_eq!(me, m[n.id() as usize - 1]);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_turns_suspect_and_a_removed_one_left() {
    let mut c = Cluster::start(3).await;
    let l = c.leader().await;
    let victim = (1..=3).find(|i| *i != l).unwrap();
    wait_members(c.node(l), "three alive", all_alive).await;
    c.kill(victim).await;
    wait_members(c.node(l), "the stopped node suspect", |m| {
        m.iter()
            .any(|x| x.id == victim && x.liveness == Liveness::Suspect)
    })
    .await;
    c.node(l).remove_node(victim).await.unwrap();
    wait_members(c.node(l), "the removed node left", |m| {
        m.iter().any(|x| {
            x.id == victim && x.liveness == Liveness::Left && x.role == MemberRole::Removed
        })
    })
    .await;
    let err = c
        .node(l)
        .send_to(victim, Echo("x".into()))
        .await
        .unwrap_err();
    match &err {
        Error::NodeUnavailable { node, reason } => {
            assert_eq!(*node, victim);
            assert!(reason.contains("left"), "{reason}");
        }
        other => panic!("expected NodeUnavailable, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_returns_that_nodes_typed_answer_or_typed_error() {
    let mut c = Cluster::start(3).await;
    c.leader().await;
    restocked(&c, "apple", 5).await;
    for from in 1..=3u64 {
        for to in 1..=3u64 {
            let n = c.node(from);
            assert_eq!(
                n.send_to(
                    to,
                    GetStock {
                        sku: "apple".into()
                    }
                )
                .await
                .unwrap(),
                Some(5)
            );
            // state-less, async
            assert_eq!(n.send_to(to, Echo("hi".into())).await.unwrap(), "hi");
            // the handler's own error, typed, inside Ok
            assert_eq!(
                n.send_to(to, MustExist { sku: "pear".into() })
                    .await
                    .unwrap(),
                Err(Refusal::NotHere { sku: "pear".into() })
            );
        }
    }
    // a node that was never a member: the distinct error, at once
    let start = tokio::time::Instant::now();
    let err = c.node(1).send_to(42, Echo("x".into())).await.unwrap_err();
    assert!(
        matches!(err, Error::NodeUnavailable { node: 42, .. }),
        "{err:?}"
    );
    assert_eq!(err.outcome(), Outcome::NotApplied);
    assert!(start.elapsed() < Duration::from_secs(1));
    // a stopped node: the distinct error, quickly, not an answer from
    // another node
    c.kill(3).await;
    let start = tokio::time::Instant::now();
    let err = c
        .node(1)
        .send_to(
            3,
            GetStock {
                sku: "apple".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NodeUnavailable { node: 3, .. }),
        "{err:?}"
    );
    assert!(start.elapsed() < c.request_timeout, "{:?}", start.elapsed());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_queries_answer_from_every_node_and_survive_a_stopped_node() {
    let mut c = Cluster::start(3).await;
    c.leader().await;
    let skus: Vec<String> = (0..20).map(|i| format!("sku{i}")).collect();
    for (i, s) in skus.iter().enumerate() {
        c.node(1)
            .send(Restock {
                sku: s.clone(),
                qty: i as u32 + 1,
            })
            .await
            .unwrap();
    }
    c.assert_replicas_equal().await;
    for n in c.up() {
        for (i, s) in skus.iter().enumerate() {
            assert_eq!(
                n.send(StockByKey { sku: s.clone() }).await.unwrap(),
                Some(i as u32 + 1)
            );
            // `query` follows the route too
            assert_eq!(
                n.query(StockByKey { sku: s.clone() }, catga::Consistency::Local)
                    .await
                    .unwrap(),
                Some(i as u32 + 1)
            );
        }
        for i in 0..9 {
            assert_eq!(
                n.send(EchoAround(format!("e{i}"))).await.unwrap(),
                format!("e{i}")
            );
        }
        assert_eq!(
            n.send(LeaderStock { sku: "sku3".into() }).await.unwrap(),
            Some(4)
        );
        assert_eq!(n.send(Lightest).await.unwrap(), 20);
    }
    // stop one node: every route still answers, at once (before the
    // heartbeat marks it suspect, a call to it fails and goes on)
    let l = c.leader().await;
    let victim = (1..=3).find(|i| *i != l).unwrap();
    c.kill(victim).await;
    let via = c.node(l);
    for (i, s) in skus.iter().enumerate() {
        assert_eq!(
            via.send(StockByKey { sku: s.clone() }).await.unwrap(),
            Some(i as u32 + 1)
        );
    }
    for i in 0..6 {
        assert_eq!(
            via.send(EchoAround(format!("e{i}"))).await.unwrap(),
            format!("e{i}")
        );
    }
    assert_eq!(via.send(Lightest).await.unwrap(), 20);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_node_now_and_reports_each_outcome() {
    let mut c = Cluster::start(3).await;
    let f = c.follower().await;
    // a broadcast goes to the members this node knows: wait until it
    // knows (and sees) all three
    wait_members(c.node(f), "three alive members", all_alive).await;
    let before = WAVES.load(Ordering::SeqCst);
    let report = c.node(f).broadcast(Wave { n: 1 }).await.unwrap();
    let summary: Vec<(u64, u32)> = report
        .iter()
        .map(|d| (d.node, *d.result.as_ref().unwrap()))
        .collect();
    assert_eq!(summary, vec![(1, 1), (2, 1), (3, 1)]);
    // the handlers ran before broadcast returned: no waiting
    assert_eq!(WAVES.load(Ordering::SeqCst) - before, 3);

    let down = (1..=3).find(|i| *i != f).unwrap();
    c.kill(down).await;
    let report = c.node(f).broadcast(Wave { n: 10 }).await.unwrap();
    for d in &report {
        if d.node == down {
            assert!(
                matches!(d.result, Err(Error::NodeUnavailable { node, .. }) if node == down),
                "{d:?}"
            );
        } else {
            assert_eq!(d.result.as_ref().unwrap(), &1, "{d:?}");
        }
    }
    assert_eq!(report.len(), 3);
    assert_eq!(WAVES.load(Ordering::SeqCst) - before, 3 + 20);
    c.shutdown().await;
}
