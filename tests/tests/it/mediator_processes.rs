//! The distributed mediator across OS processes (issue 13): `send_to` a
//! node killed (`kill -9`) mid-call, a routed query whose node dies
//! mid-call, `broadcast` with a node down, and the routes' distributions
//! (least_loaded with a node slowed 10×, round_robin, key).

use std::collections::BTreeMap;
use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(30);

/// Three node processes, every one knowing the leader and seeing the
/// other two alive.
async fn three() -> (tempfile::TempDir, Vec<Option<Proc>>) {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut procs = Vec::new();
    for i in 1..=3 {
        procs.push(Some(
            Proc::start(&Spec::member(i, &addrs, dir.path()))
                .await
                .unwrap(),
        ));
    }
    for p in procs.iter().flatten() {
        p.wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
            .await
            .unwrap();
        p.wait_for("mediator-members", T, |m| {
            m.split_whitespace()
                .filter(|x| x.ends_with(":alive"))
                .count()
                == 3
        })
        .await
        .unwrap();
    }
    (dir, procs)
}

fn p(procs: &[Option<Proc>], id: u64) -> &Proc {
    procs[id as usize - 1].as_ref().unwrap()
}

async fn quit(procs: Vec<Option<Proc>>) {
    for p in procs.into_iter().flatten() {
        p.quit().await;
    }
}

/// `id=count,...` into a map.
fn counts(s: &str) -> BTreeMap<u64, u64> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_node_killed_mid_call_is_node_unavailable_within_the_deadline() {
    let (_dir, mut procs) = three().await;
    // a plain send_to answers from the node asked
    let a = p(&procs, 1).ok("sendto 2 who").await.unwrap();
    assert_eq!(a.split_whitespace().next(), Some("2"), "{a}");

    let two = procs[1].take().unwrap();
    two.ok("hold on").await.unwrap();
    let caller = p(&procs, 1);
    let call = caller.call("sendto 2 hold", Duration::from_secs(30));
    let kill = async {
        two.ok("held 1").await.unwrap();
        two.kill9().await;
        tokio::time::Instant::now()
    };
    // the call is in flight on node 2 when node 2 dies
    let (answer, killed_at) = tokio::join!(call, kill);
    let after_kill = killed_at.elapsed();
    let answer = answer.expect("an answer before the test's timeout");
    let f: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(f[0], "err", "{answer}");
    assert_eq!(f[1], "NodeUnavailable", "the distinct error: {answer}");
    let ms: u64 = f[2].parse().unwrap();
    assert!(ms < 10_000, "within the 10 s request timeout: {answer}");
    assert!(
        after_kill < Duration::from_secs(5),
        "answered {after_kill:?} after the kill"
    );
    // it was not answered by another node: asking the dead node again is
    // the same distinct error, at once
    let again = p(&procs, 1).ok("sendto 2 who").await;
    let again = again.unwrap_err();
    assert!(again.starts_with("err NodeUnavailable"), "{again}");
    // and a node that was never a member
    let unknown = p(&procs, 3).ok("sendto 9 who").await.unwrap_err();
    assert!(unknown.contains("not a member"), "{unknown}");
    quit(procs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_query_whose_node_dies_mid_call_is_retried_on_the_next_and_broadcast_reports_the_dead_node()
 {
    let (_dir, mut procs) = three().await;
    // every node hands each key to the same owner
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let line = format!("route-key {}", keys.join(" "));
    let owners: Vec<String> = {
        let mut v = Vec::new();
        for id in 1..=3 {
            v.push(p(&procs, id).ok(&line).await.unwrap());
        }
        v
    };
    assert!(owners.windows(2).all(|w| w[0] == w[1]), "{owners:?}");
    let owner: Vec<u64> = owners[0]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    for id in 1..=3 {
        assert!(owner.contains(&id), "keys spread over all nodes: {owner:?}");
    }
    let on_2 = &keys[owner.iter().position(|o| *o == 2).unwrap()];

    // every node gets a broadcast
    let b = p(&procs, 1).ok("broadcast").await.unwrap();
    assert_eq!(b, "1:ok:1 2:ok:1 3:ok:1");
    for id in 1..=3 {
        assert_eq!(p(&procs, id).ok("hellos").await.unwrap(), "1");
    }

    // a key owned by node 2, in flight there when node 2 dies, is answered
    // by the next node in the key's order
    let two = procs[1].take().unwrap();
    two.ok("hold on").await.unwrap();
    let hold_line = format!("hold-key {on_2}");
    let call = p(&procs, 1).call(&hold_line, T);
    let kill = async {
        two.ok("held 1").await.unwrap();
        two.kill9().await;
    };
    let (answer, ()) = tokio::join!(call, kill);
    let answer = answer.expect("an answer");
    assert!(
        answer == "ok 1" || answer == "ok 3",
        "retried on a live node: {answer}"
    );

    // a broadcast with node 2 down: its failure, the others' success
    let b = p(&procs, 3).ok("broadcast").await.unwrap();
    assert_eq!(b, "1:ok:1 2:err:NodeUnavailable 3:ok:1");
    assert_eq!(p(&procs, 1).ok("hellos").await.unwrap(), "2");
    assert_eq!(p(&procs, 3).ok("hellos").await.unwrap(), "2");
    // its keys now go to the survivors
    let after = p(&procs, 1).ok(&line).await.unwrap();
    assert!(!after.split_whitespace().any(|o| o == "2"), "{after}");
    quit(procs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_avoids_a_node_ten_times_slower_and_round_robin_is_fair() {
    let (_dir, procs) = three().await;
    // round robin: every node in turn, within one call per node per cycle
    let rr = counts(&p(&procs, 1).ok("route rr 300").await.unwrap());
    assert_eq!(rr.values().sum::<u64>(), 300);
    for id in 1..=3 {
        let n = rr.get(&id).copied().unwrap_or(0);
        assert!((99..=101).contains(&n), "round robin {rr:?}");
    }
    // least_loaded: node 3's handler takes 10× as long
    for id in 1..=2 {
        p(&procs, id).ok("delay 4").await.unwrap();
    }
    p(&procs, 3).ok("delay 40").await.unwrap();
    let ll = counts(&p(&procs, 1).ok("route ll 600").await.unwrap());
    let total: u64 = ll.values().sum();
    assert_eq!(total, 600);
    let slow = ll.get(&3).copied().unwrap_or(0);
    println!(
        "least_loaded with node 3 slowed 10x: {ll:?} ({:.1}% to node 3)",
        slow as f64 * 100.0 / total as f64
    );
    assert!(slow * 10 <= total, "at most 10% to the slow node: {ll:?}");
    assert!(ll.get(&2).copied().unwrap_or(0) > 0, "{ll:?}");
    quit(procs).await;
}
