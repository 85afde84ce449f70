//! The voter count stays odd through a leave (issue 20, item 3): four
//! voters tolerate no more failures than three and need one more ack per
//! write, so a leave that leaves an even count makes one more voter a
//! learner, and a node that comes later brings the count back up.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use catga::Node;
use catga::discovery::MemoryStore;
use catga_tests::servers::unique;
use catga_tests::{GetStock, Restock};

const LONG: Duration = Duration::from_secs(30);

async fn start(store: &MemoryStore, name: &str, id: u64, dir: &Path) -> catga::Result<Node> {
    catga::cluster()
        .node_id(id)
        .listen("127.0.0.1:0")
        .data_dir(dir.join(format!("n{id}")))
        .secret("odd-voters-secret")
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(Duration::from_millis(200), Duration::from_millis(400))
        .discovery(store.clone())
        .cluster_name(name)
        .bootstrap_expect(5)
        .voters(5)
        .discovery_timings(Duration::from_millis(50), Duration::from_millis(500))
        .start()
        .await
}

/// Waits until every node sees one leader, exactly `voters` as voters and
/// `learners` as learners; returns the last view on failure.
async fn wait_membership(
    nodes: &[&Node],
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let hs: Vec<_> = nodes.iter().map(|n| n.health()).collect();
        let ok = hs[0].leader.is_some()
            && hs.iter().all(|h| {
                h.leader == hs[0].leader
                    && h.members.iter().copied().collect::<BTreeSet<u64>>() == *voters
                    && h.learners.iter().copied().collect::<BTreeSet<u64>>() == *learners
            });
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<_> = hs
                .iter()
                .map(|h| (h.node_id, h.leader, h.members.clone(), h.learners.clone()))
                .collect();
            return Err(format!(
                "wanted voters {voters:?} and learners {learners:?}; saw {seen:?}"
            ));
        }
        nodes[0].health_changed(Duration::from_millis(50)).await;
    }
}

/// Waits until every node sees `voters` voters and `learners` learners
/// (which ones is the leader's choice).
async fn wait_counts(nodes: &[&Node], voters: usize, learners: usize) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let hs: Vec<_> = nodes.iter().map(|n| n.health()).collect();
        let ok = hs[0].leader.is_some()
            && hs.iter().all(|h| {
                h.leader == hs[0].leader
                    && h.members.len() == voters
                    && h.learners.len() == learners
                    && h.members == hs[0].members
            });
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<_> = hs
                .iter()
                .map(|h| (h.node_id, h.leader, h.members.clone(), h.learners.clone()))
                .collect();
            return Err(format!(
                "wanted {voters} voters and {learners} learners; saw {seen:?}"
            ));
        }
        nodes[0].health_changed(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_from_five_voters_ends_at_three_and_a_new_node_restores_five() {
    let store = MemoryStore::new();
    let name = unique("odd-voters");
    let dir = tempfile::tempdir().expect("temp dir");
    let starts = (1..=5).map(|id| start(&store, &name, id, dir.path()));
    let nodes: Vec<Node> = futures::future::join_all(starts)
        .await
        .into_iter()
        .collect::<catga::Result<_>>()
        .expect("five nodes start");
    let all: BTreeSet<u64> = (1..=5).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_membership(&refs, &all, &BTreeSet::new())
        .await
        .expect("five voters");

    // a follower leaves; no learner is waiting to take its place
    let leader = nodes[0].health().leader.expect("a leader");
    let leaving = nodes
        .iter()
        .position(|n| n.id() != leader)
        .expect("a follower");
    nodes[leaving].leave().await.expect("leave");
    let rest: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leaving)
        .map(|(_, n)| n)
        .collect();
    // three voters and one learner, never four voters for good
    wait_counts(&rest, 3, 1)
        .await
        .expect("an odd voter count after the leave");
    rest[0]
        .send(Restock {
            sku: "odd".into(),
            qty: 1,
        })
        .await
        .expect("a write with three voters");

    // a sixth node comes: it and the demoted learner are promoted together
    let sixth = start(&store, &name, 6, dir.path()).await.expect("node 6");
    let mut all_now = rest.clone();
    all_now.push(&sixth);
    let voters: BTreeSet<u64> = all_now.iter().map(|n| n.id()).collect();
    wait_membership(&all_now, &voters, &BTreeSet::new())
        .await
        .expect("five voters again");
    let left = sixth
        .send(Restock {
            sku: "odd".into(),
            qty: 1,
        })
        .await
        .expect("a write through node 6");
    assert_eq!(left, 2);
    assert_eq!(
        sixth
            .query(
                GetStock { sku: "odd".into() },
                catga::Consistency::Linearizable
            )
            .await
            .expect("read"),
        Some(2)
    );
    sixth.shutdown().await;
    for n in rest {
        n.shutdown().await;
    }
}
