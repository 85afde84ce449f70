//! Snapshots of any size reach a new node, in chunks, with memory bounded by
//! the state (not by a multiple of it), and a node that cannot be added is
//! removed again with the cause. Real processes.
//!
//! `CATGA_SNAPSHOT_MIB` sets the state size of the memory test (default 48);
//! it prints the peak RSS figures and the longest write during a snapshot.

use std::time::{Duration, Instant};

use catga_tests::process::{Proc, Spec, free_addr};

const T: Duration = Duration::from_secs(60);

/// Starts a 3-node cluster whose nodes keep no log behind a snapshot (so a
/// new node can only catch up from one); returns it and its leader's index.
async fn three(dir: &std::path::Path, args: &[&str]) -> (Vec<Proc>, Vec<String>, usize) {
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut procs = Vec::new();
    for i in 1..=3 {
        let spec = Spec {
            keep_logs: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Spec::member(i, &addrs, dir)
        };
        procs.push(Proc::start(&spec).await.unwrap());
    }
    let leader = procs[0].wait_leader(T).await.unwrap();
    (procs, addrs, leader - 1)
}

fn joiner(id: u64, addrs: &[String], dir: &std::path::Path, args: &[&str]) -> Spec {
    Spec {
        id,
        addr: free_addr(),
        data_dir: dir.join(format!("n{id}")),
        peers: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.clone()))
            .collect(),
        join: true,
        keep_logs: 0,
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Spec::member(1, addrs, dir)
    }
}

fn digest(fingerprint: &str) -> String {
    fingerprint
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

async fn memory(p: &Proc) -> (u64, u64) {
    let m = p.ok("memory").await.unwrap();
    let mut it = m.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Before chunked snapshots, a state larger than the frame limit never
/// reached a new node: `add_node` gave up after 30 s with "no response
/// before the deadline" and left the learner in the membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_larger_than_the_frame_limit_reaches_a_new_node() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB frames, a 6 MiB state: 24 frames' worth
    let args = ["--max-frame-bytes", "262144"];
    let (procs, addrs, l) = three(dir.path(), &args).await;
    let leader = &procs[l];
    for seed in 1..=3 {
        leader.ok(&format!("fill 2 {seed}")).await.unwrap();
    }
    leader.ok("restock apple 5").await.unwrap();
    leader.ok("snapshot").await.unwrap();
    leader
        .wait_status(T, |s| s.num("snapshot") >= s.num("applied"))
        .await
        .unwrap();

    let spec = joiner(4, &addrs, dir.path(), &args);
    let new = Proc::start(&spec).await.unwrap();
    let added = leader
        .call(&format!("add 4 {}", spec.addr), Duration::from_secs(120))
        .await;
    assert_eq!(added.as_deref(), Some("ok"), "add_node");
    let want = digest(&leader.ok("fingerprint").await.unwrap());
    new.wait_for("fingerprint", T, |f| digest(f) == want)
        .await
        .unwrap();
    assert_eq!(new.ok("stock apple").await.unwrap(), "5");
    let m = leader.ok("membership").await.unwrap();
    // four voters would be even: it stays a learner until a fifth joins
    assert_eq!(m, "voters=1,2,3 learners=4");
}

/// A node that cannot catch up (nothing listens at its address) is removed
/// from the membership again, and `add_node` says why. Before: it waited
/// for the caller's deadline ("no response before the deadline") and the
/// learner stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_added_is_removed_again_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, _addrs, l) = three(dir.path(), &[]).await;
    let leader = &procs[l];
    leader.ok("restock apple 1").await.unwrap();
    // nothing listens there
    let dead = free_addr();
    let started = Instant::now();
    let r = leader
        .call(&format!("add 9 {dead}"), Duration::from_secs(120))
        .await
        .unwrap_or_default();
    println!(
        "add_node of a dead address answered in {:?}: {r}",
        started.elapsed()
    );
    assert!(r.starts_with("fail"), "{r}");
    assert!(r.contains("made no progress"), "{r}");
    assert!(r.contains("last error"), "the cause is named: {r}");
    assert!(r.contains("removed again"), "{r}");
    let m = leader.ok("membership").await.unwrap();
    assert_eq!(m, "voters=1,2,3 learners=-");
    // and the cluster goes on
    leader.ok("restock apple 1").await.unwrap();
}

/// Building, sending and installing a snapshot holds no copy of the whole
/// encoded state in memory: a node's peak RSS grows by at most 1.5x the
/// state (it was 5-7x). Prints the figures and the longest write while the
/// leader snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_memory_stays_near_the_state_size() {
    let mib: u64 = std::env::var("CATGA_SNAPSHOT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let dir = tempfile::tempdir().unwrap();
    let (procs, addrs, l) = three(dir.path(), &[]).await;
    let leader = &procs[l];
    let follower = &procs[(l + 1) % 3];
    let (_, base) = memory(leader).await;
    let mut left = mib;
    let mut seed = 1;
    while left > 0 {
        let n = left.min(32);
        leader.ok(&format!("fill {n} {seed}")).await.unwrap();
        left -= n;
        seed += 1;
    }
    let (_, filled) = memory(leader).await;

    // writes through a follower while the leader snapshots, and for as long
    // without a snapshot (the baseline on this machine)
    let writes = || async {
        let mut longest = Duration::ZERO;
        let mut n = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let t = Instant::now();
            follower.ok("restock w 1").await.unwrap();
            longest = longest.max(t.elapsed());
            n += 1;
        }
        (n, longest)
    };
    let (_, baseline) = writes().await;
    let snap = leader.ok("snapshot");
    let (s, (n, longest)) = tokio::join!(snap, writes());
    s.unwrap();
    leader
        .wait_status(T, |s| s.num("snapshot") > 0)
        .await
        .unwrap();
    let (leader_peak, _) = memory(leader).await;

    let spec = joiner(4, &addrs, dir.path(), &[]);
    let new = Proc::start(&spec).await.unwrap();
    let (_, new_base) = memory(&new).await;
    let added = leader
        .call(&format!("add 4 {}", spec.addr), Duration::from_secs(300))
        .await;
    assert_eq!(added.as_deref(), Some("ok"), "add_node");
    // caught up (by status: `fingerprint` encodes the whole state in memory)
    let applied = leader
        .ok("status")
        .await
        .map(catga_tests::process::Status)
        .unwrap();
    let target = applied.num("applied");
    new.wait_status(Duration::from_secs(300), |s| s.num("applied") >= target)
        .await
        .unwrap();
    let (new_peak, new_now) = memory(&new).await;
    let want = digest(&leader.ok("fingerprint").await.unwrap());
    new.wait_for("fingerprint", T, |f| digest(f) == want)
        .await
        .unwrap();

    let state = mib * 1024;
    println!(
        "state {mib} MiB: leader rss {} -> {} MiB after filling, peak {} MiB while \
         snapshotting (+{:.2}x the state); new node rss {} MiB at start, peak {} MiB \
         (+{:.2}x), {} MiB after; {n} writes through a follower during the snapshot, \
         longest {longest:?} (without a snapshot: {baseline:?})",
        base / 1024,
        filled / 1024,
        leader_peak / 1024,
        (leader_peak - base) as f64 / state as f64,
        new_base / 1024,
        new_peak / 1024,
        (new_peak - new_base) as f64 / state as f64,
        new_now / 1024,
    );
    // 1.5x the state plus 24 MiB of buffers and allocator slack
    let bound = state * 3 / 2 + 24 * 1024;
    assert!(
        leader_peak - base <= bound,
        "the leader's peak grew by {} MiB for a {mib} MiB state",
        (leader_peak - base) / 1024
    );
    assert!(
        new_peak - new_base <= bound,
        "the new node's peak grew by {} MiB for a {mib} MiB state",
        (new_peak - new_base) / 1024
    );
}
