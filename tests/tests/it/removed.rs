//! A removed node says so (issue 20, item 2): a voter removed while it was
//! down comes back on its own data dir, with a log and a membership that
//! still list it. Its peers saw it removed and refuse it in the handshake;
//! it must not pass for a replica (its state stopped at the removal): its
//! writes fail within a second or two, its queries at once, with an error
//! naming the cause and the fix; its health says it; `stopped()` resolves,
//! since it can never serve under this id. Nodes are OS processes.

use std::time::{Duration, Instant};

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_voter_that_comes_back_knows_it_is_refused_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec::member(i, &addrs, dir.path()))
        .collect();
    let n1 = Proc::start(&specs[0]).await.expect("node 1");
    let n2 = Proc::start(&specs[1]).await.expect("node 2");
    let n3 = Proc::start(&specs[2]).await.expect("node 3");
    n3.wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
        .await
        .expect("node 3 follows a leader");
    for _ in 0..5 {
        n1.ok("restock apple 1").await.expect("a write");
    }
    n3.wait_for("stock apple", T, |s| s == "5")
        .await
        .expect("node 3 applied the writes");

    // node 3 goes down and is removed; the cluster goes on without it
    n3.kill9().await;
    n1.ok("remove 3").await.expect("node 3 removed");
    n1.ok("restock apple 1")
        .await
        .expect("a write after the removal");

    // node 3 comes back on its data dir: it still lists itself as a voter
    let n3 = Proc::start(&specs[2]).await.expect("node 3 restarts");
    let started = Instant::now();

    // a write through it fails within a few seconds, naming the cause
    let w = n3
        .call("restock apple 1", T)
        .await
        .expect("an answer to the write");
    let took = started.elapsed();
    assert!(w.starts_with("fail") && w.contains("removed"), "{w}");
    assert!(w.contains("new id"), "the error must say what to do: {w}");
    assert!(
        took < Duration::from_secs(3),
        "the write failed after {took:?}"
    );
    eprintln!("FIGURE a write through a removed node failed after {took:?}");

    // once known, everything fails at once (its state stopped at the removal)
    for cmd in ["stock apple", "stock! apple", "restock apple 1"] {
        let t = Instant::now();
        let r = n3.call(cmd, T).await.expect("an answer");
        assert!(r.starts_with("fail") && r.contains("removed"), "{cmd}: {r}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{cmd} took {:?}",
            t.elapsed()
        );
    }
    let status = n3.ok("status").await.expect("status");
    assert!(
        status.contains("ready=false") && status.contains("removed"),
        "{status}"
    );
    // it can never serve under this id: stopped() resolves
    let stopped = n3.ok("stopped 10000").await.expect("stopped");
    assert!(
        stopped.contains("removed"),
        "stopped() did not resolve: {stopped}"
    );

    // the members are unchanged and go on
    n1.ok("restock apple 1").await.expect("a write");
    assert_eq!(n2.ok("stock! apple").await.expect("read"), "7");
    // node 3 is gone from the membership, and the voters stay odd (one of
    // the two left is a learner until a third node joins)
    let m = n1.ok("membership").await.expect("membership");
    let list = |key: &str| -> Vec<String> {
        m.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(|l| l.split(',').map(String::from).collect())
            .unwrap_or_default()
    };
    let (voters, learners) = (list("voters="), list("learners="));
    assert_eq!(voters.len(), 1, "{m}");
    let mut all: Vec<String> = voters.into_iter().chain(learners).collect();
    all.sort();
    assert_eq!(all, ["1", "2"], "{m}");
    for p in [n1, n2, n3] {
        p.quit().await;
    }
}
