//! A node whose data dir was wiped (a replaced disk) must not vote with no
//! history: nodes remember each other's data-dir incarnation and refuse a
//! member that comes back with a new one. And a static cluster forms when
//! any majority of its listed members starts. Nodes are OS processes; a
//! crash is `kill -9`.

use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(30);

fn field(h: &str, i: usize) -> String {
    h.split_whitespace().nth(i).unwrap_or("").to_string()
}

/// Waits until `p` follows some leader and is ready; returns the leader id.
async fn leader_seen_by(p: &Proc) -> u64 {
    let h = p
        .wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
        .await
        .unwrap();
    field(&h, 2).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_cannot_elect_a_leader_that_lacks_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec::member(i, &addrs, dir.path()))
        .collect();
    let n1 = Proc::start(&specs[0]).await.unwrap();
    let n2 = Proc::start(&specs[1]).await.unwrap();
    let n3 = Proc::start(&specs[2]).await.unwrap();
    leader_seen_by(&n3).await;
    n3.ok("restock apple 0").await.unwrap();

    // node 3 stops; 100 writes are acknowledged by nodes 1 and 2
    n3.kill9().await;
    for _ in 0..100 {
        n1.ok("restock apple 1").await.unwrap();
    }
    // node 2 stops; node 1's disk is replaced (wiped) and it starts again
    n2.kill9().await;
    n1.kill9().await;
    std::fs::remove_dir_all(&specs[0].data_dir).unwrap();
    let n1 = Proc::start(&specs[0]).await.unwrap();
    let n3 = Proc::start(&specs[2]).await.unwrap();
    // Nodes 1 and 3 are a majority of {1, 2, 3}, but node 1 has no history:
    // node 3 refuses it, so no write can be acknowledged without node 2.
    let refused = n3.call("restock pear 1", Duration::from_secs(3)).await;
    assert!(
        !refused.as_deref().is_some_and(|r| r.starts_with("ok")),
        "a write was acknowledged by node 3 and the wiped node 1: {refused:?}"
    );
    // node 2 returns: 2 and 3 elect a leader that has every acknowledged write
    let n2 = Proc::start(&specs[1]).await.unwrap();
    leader_seen_by(&n3).await;
    let stock = n3.ok("stock! apple").await.unwrap();
    assert_eq!(stock, "100", "acknowledged writes were lost");
    let stock2 = n2.ok("stock! apple").await.unwrap();
    assert_eq!(stock2, "100");
    // the wiped node is kept out: it never learns of a leader
    let h1 = n1.ok("health").await.unwrap();
    assert_eq!(field(&h1, 2), "none", "the wiped node joined: {h1}");
    assert_eq!(field(&h1, 4), "false", "the wiped node says ready: {h1}");
    for p in [n1, n2, n3] {
        p.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_cluster_forms_when_any_majority_of_its_members_starts() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    // node 1, the smallest id, never starts
    let n2 = Proc::start(&Spec::member(2, &addrs, dir.path()))
        .await
        .unwrap();
    let n3 = Proc::start(&Spec::member(3, &addrs, dir.path()))
        .await
        .unwrap();
    let leader = leader_seen_by(&n2).await;
    assert!(leader == 2 || leader == 3, "leader {leader}");
    assert_eq!(n3.ok("restock pear 4").await.unwrap(), "4");
    assert_eq!(n2.ok("stock! pear").await.unwrap(), "4");
    // node 1 starts late and joins the cluster the others formed
    let n1 = Proc::start(&Spec::member(1, &addrs, dir.path()))
        .await
        .unwrap();
    n1.wait_health(T, |f| f.len() == 5 && f[4] == "true")
        .await
        .unwrap();
    assert_eq!(n1.ok("stock! pear").await.unwrap(), "4");
    for p in [n1, n2, n3] {
        p.quit().await;
    }
}
