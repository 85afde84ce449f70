//! A cluster of OS processes: `kill -9` of the leader loses no acknowledged
//! write, and the survivors and the restarted node end equal.

use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(30);

async fn leader_of(procs: &[Option<Proc>]) -> u64 {
    for p in procs.iter().flatten() {
        if let Ok(h) = p
            .wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
            .await
        {
            return h.split_whitespace().nth(2).unwrap().parse().unwrap();
        }
    }
    panic!("no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_process_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec::member(i, &addrs, dir.path()))
        .collect();
    let mut procs = Vec::new();
    for s in &specs {
        procs.push(Some(Proc::start(s).await.unwrap()));
    }
    let leader = leader_of(&procs).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut acked = 0u32;
    for _ in 0..50 {
        let via = procs[follower as usize - 1].as_ref().unwrap();
        via.ok("restock apple 1").await.unwrap();
        acked += 1;
    }
    procs[leader as usize - 1].take().unwrap().kill9().await;
    // writes go on through the survivors once they elect a new leader
    let via = procs[follower as usize - 1].as_ref().unwrap();
    for _ in 0..50 {
        via.ok("restock apple 1").await.unwrap();
        acked += 1;
    }
    // the killed node comes back from its data dir and catches up
    procs[leader as usize - 1] = Some(Proc::start(&specs[leader as usize - 1]).await.unwrap());
    let via = procs[follower as usize - 1].as_ref().unwrap();
    let n = via.ok("stock! apple").await.unwrap();
    assert_eq!(
        n,
        acked.to_string(),
        "every acknowledged write is there once"
    );
    let target: u64 = via
        .ok("health")
        .await
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let mut prints = Vec::new();
    for p in procs.iter().flatten() {
        p.wait_health(T, |f| {
            f.len() == 5 && f[3].parse::<u64>().unwrap_or(0) >= target
        })
        .await
        .unwrap();
        let fp = p.ok("fingerprint").await.unwrap();
        let applied: u64 = fp.split_whitespace().next().unwrap().parse().unwrap();
        prints.push((applied, fp));
    }
    // compare replicas at the same applied index: wait until all agree
    let max = prints.iter().map(|(a, _)| *a).max().unwrap();
    let mut fps = Vec::new();
    for p in procs.iter().flatten() {
        p.wait_health(T, |f| {
            f.len() == 5 && f[3].parse::<u64>().unwrap_or(0) >= max
        })
        .await
        .unwrap();
        fps.push(p.ok("fingerprint").await.unwrap());
    }
    assert!(
        fps.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {fps:?}"
    );
    for p in procs.into_iter().flatten() {
        p.quit().await;
    }
}
