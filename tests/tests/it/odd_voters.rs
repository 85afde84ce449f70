//! The voter count stays odd through a leave (issue 20, item 3): four
//! voters tolerate no more failures than three and need one more ack per
//! write, so a leave that leaves an even count makes one more voter a
//! learner, and a node that comes later brings the count back up. In a
//! discovered cluster and in a static one (the leader's `remove_node` and
//! `add_node`), in one process and with processes killed by `kill -9`.

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

// ---- static clusters (a peer list, no discovery): the leader's
// `remove_node` and `add_node` keep the count odd themselves ----

/// Records every voter count `node` shows until stopped: a membership that
/// rests at an even count is seen (a joint change shows the union of both
/// sets, so a change from five to three voters is never seen as four).
fn watch_voter_counts(
    node: Node,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<usize>>,
) {
    let (stop, mut done) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut seen = vec![node.health().members.len()];
        loop {
            let stopped = tokio::select! {
                _ = &mut done => true,
                _ = node.health_changed(Duration::from_millis(20)) => false,
            };
            let n = node.health().members.len();
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            if stopped {
                return seen;
            }
        }
    });
    (stop, task)
}

/// Waits until a static cluster of five has a leader, every node sees five
/// voters, and a write committed (so the initial membership is committed:
/// before that, the leader refuses membership changes as "already
/// undergoing a configuration change"); returns the leader.
async fn settled_five(c: &catga_tests::harness::Cluster) -> u64 {
    let leader = c.leader().await;
    c.node(leader)
        .send(Restock {
            sku: "settle".into(),
            qty: 1,
        })
        .await
        .expect("a first write");
    let all: Vec<&Node> = c.up().collect();
    wait_counts(&all, 5, 0).await.expect("five voters");
    leader
}

/// Starts a node that an existing static cluster adds with `add_node`.
async fn joiner(c: &catga_tests::harness::Cluster, id: u64) -> (Node, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let node = catga::cluster()
        .node_id(id)
        .listener(l)
        .data_dir(c.dir.path().join(format!("n{id}")))
        .secret("test-secret")
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(Duration::from_millis(300), Duration::from_millis(600))
        .join_existing()
        .start()
        .await
        .expect("joiner starts");
    (node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_cluster_of_five_ends_at_three_voters_after_a_leave_and_five_after_a_join() {
    let c = catga_tests::harness::Cluster::start(5).await;
    let leader = settled_five(&c).await;
    let leaving = (1..=5).find(|i| *i != leader).expect("a follower");
    let watcher = (1..=5)
        .find(|i| *i != leader && *i != leaving)
        .expect("another follower");
    let (stop, counts) = watch_voter_counts(c.node(watcher).clone());

    c.node(leaving).leave().await.expect("leave");
    // at once, on the leader: three voters and one learner, never four voters
    let h = c.node(leader).health();
    assert_eq!(
        (h.members.len(), h.learners.len()),
        (3, 1),
        "after the leave: voters {:?}, learners {:?}",
        h.members,
        h.learners
    );
    assert!(!h.members.contains(&leaving) && !h.learners.contains(&leaving));
    assert!(h.members.contains(&leader), "the leader stays a voter");
    let rest: Vec<&Node> = c.up().filter(|n| n.id() != leaving).collect();
    wait_counts(&rest, 3, 1)
        .await
        .expect("every node sees three voters and one learner");
    let demoted = h.learners[0];
    c.node(leader)
        .send(Restock {
            sku: "static-odd".into(),
            qty: 1,
        })
        .await
        .expect("a write with three voters");

    // a new node joins: it and the demoted learner become voters together
    let (sixth, addr) = joiner(&c, 6).await;
    c.node(watcher).add_node(6, addr).await.expect("add_node");
    let mut all: Vec<&Node> = rest.clone();
    all.push(&sixth);
    let voters: BTreeSet<u64> = all.iter().map(|n| n.id()).collect();
    assert!(voters.contains(&demoted));
    wait_membership(&all, &voters, &BTreeSet::new())
        .await
        .expect("five voters again, the demoted learner among them");
    assert_eq!(
        sixth
            .send(Restock {
                sku: "static-odd".into(),
                qty: 1,
            })
            .await
            .expect("a write through node 6"),
        2
    );

    let _ = stop.send(());
    let seen = counts.await.expect("watcher");
    assert!(
        seen.iter().all(|n| n % 2 == 1),
        "node {watcher} saw an even voter count: {seen:?}"
    );
    sixth.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_leaving_five_voters_leaves_three_and_a_learner() {
    let c = catga_tests::harness::Cluster::start(5).await;
    let leader = settled_five(&c).await;
    c.node(leader).leave().await.expect("the leader leaves");
    let rest: Vec<&Node> = c.up().filter(|n| n.id() != leader).collect();
    wait_counts(&rest, 3, 1)
        .await
        .expect("three voters and one learner after the leader left");
    let h = rest[0].health();
    assert!(!h.members.contains(&leader) && !h.learners.contains(&leader));
    rest[0]
        .send(Restock {
            sku: "leader-left".into(),
            qty: 1,
        })
        .await
        .expect("a write after the leader left");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_dead_voter_of_five_leaves_three_and_joins_wait_for_a_pair() {
    let mut c = catga_tests::harness::Cluster::start(5).await;
    let leader = settled_five(&c).await;
    let dead = (1..=5).rev().find(|i| *i != leader).expect("a follower");
    c.kill(dead).await;
    let (stop, counts) = watch_voter_counts(c.node(leader).clone());

    // the operator removes the dead node (as `DELETE /admin/members/{id}`)
    c.node(leader).remove_node(dead).await.expect("remove_node");
    let live: Vec<&Node> = c.up().collect();
    wait_counts(&live, 3, 1)
        .await
        .expect("three voters and one learner after the removal");
    let h = c.node(leader).health();
    assert!(!h.members.contains(&dead) && !h.learners.contains(&dead));

    // one node joins: four voters would be even, so it waits as a learner...
    let (sixth, addr6) = joiner(&c, 6).await;
    let (seventh, addr7) = joiner(&c, 7).await;
    c.node(leader).add_node(6, addr6).await.expect("add_node 6");
    let mut all: Vec<&Node> = live.clone();
    all.push(&sixth);
    // promoted together with the demoted learner: five voters
    wait_counts(&all, 5, 0).await.expect("five voters");
    // ...and beyond five (no limit in a static cluster), a lone node waits
    c.node(leader).add_node(7, addr7).await.expect("add_node 7");
    all.push(&seventh);
    wait_counts(&all, 5, 1)
        .await
        .expect("five voters, node 7 a learner");
    assert_eq!(seventh.health().learners, vec![7]);
    seventh
        .send(Restock {
            sku: "static-dead".into(),
            qty: 3,
        })
        .await
        .expect("a write through the learner");

    let _ = stop.send(());
    let seen = counts.await.expect("watcher");
    assert!(
        seen.iter().all(|n| n % 2 == 1),
        "the leader saw an even voter count: {seen:?}"
    );
    seventh.shutdown().await;
    sixth.shutdown().await;
    c.shutdown().await;
}

/// `voters=1,2,3 learners=4` → (3 voters, 1 learner).
fn counts(membership: &str) -> (usize, usize) {
    let n = |field: &str| {
        membership
            .split_whitespace()
            .find_map(|w| w.strip_prefix(field))
            .map(|v| if v == "-" { 0 } else { v.split(',').count() })
            .unwrap_or(usize::MAX)
    };
    (n("voters="), n("learners="))
}

/// The same with processes: a voter killed with `kill -9` and removed by
/// the operator leaves three voters and one learner; a new process brings
/// five back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_a_voter_killed_and_removed_leaves_three_voters_and_a_join_restores_five() {
    use catga_tests::process::{Proc, Spec, free_addr};
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs: Vec<String> = (0..5).map(|_| free_addr()).collect();
    let mut procs = Vec::new();
    for id in 1..=5 {
        let spec = Spec::member(id, &addrs, dir.path());
        procs.push(Some(Proc::start(&spec).await.expect("node starts")));
    }
    let leader = procs[0]
        .as_ref()
        .expect("node 1")
        .wait_leader(LONG)
        .await
        .expect("a leader") as u64;
    // a committed write: the initial membership is committed too
    procs[leader as usize - 1]
        .as_ref()
        .expect("the leader")
        .ok("restock settle 1")
        .await
        .expect("a first write");
    for p in procs.iter().flatten() {
        p.wait_for("membership", LONG, |m| counts(m) == (5, 0))
            .await
            .expect("five voters");
    }
    let victim = (1..=5u64).rev().find(|i| *i != leader).expect("a follower");
    procs[victim as usize - 1]
        .take()
        .expect("the victim")
        .kill9()
        .await;
    let lp = procs[leader as usize - 1].as_ref().expect("the leader");
    lp.ok(&format!("remove {victim}")).await.expect("remove");
    // at once: three voters and one learner, the victim gone
    let m = lp.ok("membership").await.expect("membership");
    assert_eq!(counts(&m), (3, 1), "after the removal: {m}");
    assert!(!m.contains(&victim.to_string()), "{m}");
    for p in procs.iter().flatten() {
        p.wait_for("membership", LONG, |m| counts(m) == (3, 1))
            .await
            .expect("every node sees three voters and a learner");
    }
    lp.ok("restock p 1")
        .await
        .expect("a write with three voters");

    let joiner = Spec {
        id: 6,
        addr: free_addr(),
        data_dir: dir.path().join("n6"),
        peers: Vec::new(),
        join: true,
        ..Spec::member(1, &addrs, dir.path())
    };
    let sixth = Proc::start(&joiner).await.expect("node 6 starts");
    lp.ok(&format!("add 6 {}", joiner.addr))
        .await
        .expect("add_node");
    for p in procs.iter().flatten().chain([&sixth]) {
        p.wait_for("membership", LONG, |m| counts(m) == (5, 0))
            .await
            .expect("five voters again");
    }
    assert_eq!(sixth.ok("restock p 1").await.expect("a write via 6"), "2");
}
