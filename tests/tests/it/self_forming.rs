//! A cluster that forms and grows by itself (issue 12): bootstrap under
//! random start orders, a wiped initializer, growing and shrinking under
//! load with the store stopped, nodes of another cluster refused.
//!
//! The seed sweep runs in-process nodes on one shared in-memory store, so
//! that each seed is cheap (`CATGA_SELFFORM_SEEDS`, default 50; set 1000 for
//! a long run). Everything else runs real processes against real Redis and
//! NATS servers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use catga::discovery::{Discovery, DiscoveryConfig, MemoryStore};
use catga::{Consistency, Node};
use catga_tests::process::{Members, Proc, Spec};
use catga_tests::servers::{ServerProcess, shared_nats, shared_redis, unique};
use catga_tests::{GetStock, Restock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LONG: Duration = Duration::from_secs(30);

async fn start_mem(
    store: &MemoryStore,
    name: &str,
    id: u64,
    dir: &Path,
    expect: usize,
) -> catga::Result<Node> {
    catga::cluster()
        .node_id(id)
        .listen("127.0.0.1:0")
        .data_dir(dir.join(format!("n{id}")))
        .secret("selfform-secret")
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(Duration::from_millis(200), Duration::from_millis(400))
        .discovery(store.clone())
        .cluster_name(name)
        .bootstrap_expect(expect)
        .discovery_timings(Duration::from_millis(50), Duration::from_millis(500))
        .start()
        .await
}

/// The cluster id recorded in a node's data dir (`identity` file).
fn dir_cluster(dir: &Path, id: u64) -> String {
    let text =
        std::fs::read_to_string(dir.join(format!("n{id}")).join("identity")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("cluster "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Waits until every node sees the same leader, `voters` voters, and all
/// the nodes as members (voters or learners).
async fn wait_formed(nodes: &[Node], voters: usize) -> Result<(), String> {
    let all: BTreeSet<u64> = nodes.iter().map(|n| n.id()).collect();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let hs: Vec<_> = nodes.iter().map(|n| n.health()).collect();
        let leader = hs[0].leader;
        let ok = leader.is_some()
            && hs.iter().all(|h| {
                let members: BTreeSet<u64> =
                    h.members.iter().chain(h.learners.iter()).copied().collect();
                h.leader == leader && h.members.len() == voters && members == all
            });
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<_> = hs
                .iter()
                .map(|h| (h.node_id, h.leader, h.members.clone(), h.learners.clone()))
                .collect();
            return Err(format!("never formed: {seen:?}"));
        }
        nodes[0].health_changed(Duration::from_millis(50)).await;
    }
}

async fn one_seed(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = MemoryStore::new();
    let name = unique("sweep");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let n = 3 + (seed % 3);
    let mut order: Vec<u64> = (1..=n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let delays: Vec<u64> = order.iter().map(|_| rng.random_range(0..400)).collect();
    let starts = order.iter().zip(delays).map(|(id, delay)| {
        let (store, name, dir) = (store.clone(), name.clone(), dir.path().to_path_buf());
        async move {
            // a start delay is the scenario (a slow machine), not a wait
            tokio::time::sleep(Duration::from_millis(delay)).await;
            start_mem(&store, &name, *id, &dir, 3).await
        }
    });
    let mut nodes = Vec::new();
    for r in futures::future::join_all(starts).await {
        nodes.push(r.map_err(|e| format!("start: {e}"))?);
    }
    let formed = wait_formed(&nodes, 3).await;
    let result = async {
        formed?;
        let d = store
            .discovery(DiscoveryConfig::new(name.clone()))
            .map_err(|e| e.to_string())?;
        let record = d
            .read_record("cluster-id")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no cluster-id record")?;
        for id in 1..=n {
            let c = dir_cluster(dir.path(), id);
            if c != record {
                return Err(format!("node {id} has cluster {c}, the record {record}"));
            }
        }
        // a write through the last node, seen by a local query everywhere
        let last = nodes.last().ok_or("no node")?;
        let left = last
            .send(Restock {
                sku: "s".into(),
                qty: seed as u32 + 1,
            })
            .await
            .map_err(|e| e.to_string())?;
        for node in &nodes {
            let v = node
                .query(GetStock { sku: "s".into() }, Consistency::Linearizable)
                .await
                .map_err(|e| e.to_string())?;
            if v != Some(left) {
                return Err(format!("node {} reads {v:?}, wrote {left}", node.id()));
            }
        }
        Ok(())
    }
    .await;
    for node in &nodes {
        node.shutdown().await;
    }
    result.map_err(|e| format!("seed {seed} ({n} nodes, order {order:?}): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_under_random_start_orders_forms_exactly_one_cluster() {
    let seeds: u64 = std::env::var("CATGA_SELFFORM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let base: u64 = std::env::var("CATGA_SELFFORM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let all: Vec<u64> = (base..base + seeds).collect();
    for batch in all.chunks(4) {
        let results = futures::future::join_all(batch.iter().map(|s| one_seed(*s))).await;
        for r in results {
            if let Err(e) = r {
                panic!("{e}");
            }
        }
    }
    eprintln!(
        "{seeds} seeds formed exactly one cluster each in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_and_never_merged() {
    let store = MemoryStore::new();
    let (a, b) = (unique("a"), unique("b"));
    let dir = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_mem(&store, &a, id, dir.path(), 3).await.unwrap());
    }
    wait_formed(&nodes, 3).await.unwrap();
    // a one-node cluster "b" forms on its own
    let other = start_mem(&store, &b, 7, bdir.path(), 1).await.unwrap();
    wait_formed(std::slice::from_ref(&other), 1).await.unwrap();
    other.shutdown().await;
    // its data dir started under cluster "a": refused at start, by name
    let err = start_mem(&store, &a, 7, bdir.path(), 3).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, catga::Error::ClusterMismatch(_)) && msg.contains("never merged"),
        "{msg}"
    );
    // "a" never saw node 7 as a member
    for n in &nodes {
        let h = n.health();
        assert!(!h.members.contains(&7) && !h.learners.contains(&7), "{h:?}");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

// ---- real processes ----

fn spec(id: u64, url: &str, name: &str, dir: &Path, extra: &[&str]) -> Spec {
    let mut s = Spec::discovered(id, url, name, 3, dir);
    s.args.extend(extra.iter().map(|a| a.to_string()));
    s
}

async fn leader_of(procs: &BTreeMap<u64, Proc>) -> u64 {
    let any = procs.values().next().expect("a process");
    any.wait_members(LONG, |m| m.leader.is_some())
        .await
        .expect("a leader")
        .leader
        .unwrap_or(0)
}

/// Deletes every Redis key under `prefix`.
async fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for k in keys {
        let _: Result<(), _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
    }
}

async fn redis_record(url: &str, name: &str, record: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(format!("catga:{{{name}}}:rec:{record}"))
        .query_async(&mut conn)
        .await
        .ok()?
}

/// Starts processes `ids` in a random order with random delays, all at once.
async fn start_all(specs: Vec<Spec>, seed: u64) -> BTreeMap<u64, Proc> {
    let mut rng = StdRng::seed_from_u64(seed);
    let starts = specs.into_iter().map(|s| {
        let delay = rng.random_range(0..300);
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            (s.id, Proc::start(&s).await)
        }
    });
    let mut procs = BTreeMap::new();
    for (id, p) in futures::future::join_all(starts).await {
        procs.insert(id, p.unwrap_or_else(|e| panic!("node {id}: {e}")));
    }
    procs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_processes_bootstrap_join_kill_and_leave() {
    let url = shared_redis();
    let name = unique("sf_redis");
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..3u64 {
        let name = format!("{name}_{seed}");
        let t0 = Instant::now();
        let specs = (1..=3)
            .map(|id| spec(id, &url, &name, &dir.path().join(&name), &[]))
            .collect();
        let mut procs = start_all(specs, seed).await;
        for p in procs.values() {
            p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
                .await
                .unwrap();
        }
        eprintln!(
            "FIGURE cold bootstrap of 3 processes (seed {seed}): {:?}",
            t0.elapsed()
        );
        if seed > 0 {
            for (_, p) in std::mem::take(&mut procs) {
                p.kill9().await;
            }
            redis_cleanup(&url, &format!("catga:{{{name}}}")).await;
            continue;
        }
        // a write through a follower
        let leader = leader_of(&procs).await;
        let follower = procs.keys().copied().find(|i| *i != leader).unwrap();
        procs[&follower].ok("restock apple 5").await.unwrap();
        procs[&follower].ok("restock apple 5").await.unwrap();
        // a 4th node joins as a learner and serves the latest write locally
        let t4 = Instant::now();
        let p4 = Proc::start(&spec(4, &url, &name, &dir.path().join(&name), &[]))
            .await
            .unwrap();
        p4.wait_for("stock apple", LONG, |s| s == "10")
            .await
            .unwrap();
        eprintln!(
            "FIGURE a node started against a running cluster reads the latest write locally after {:?}",
            t4.elapsed()
        );
        p4.wait_members(LONG, |m| m.learners == [4] && m.voters == [1, 2, 3])
            .await
            .unwrap();
        procs.insert(4, p4);
        // kill -9 a voter: the cluster goes on; the dead voter stays (suspect)
        let victim = procs
            .keys()
            .copied()
            .find(|i| *i != leader && *i != 4)
            .unwrap();
        procs.remove(&victim).unwrap().kill9().await;
        let writer = procs.keys().copied().find(|i| *i != leader).unwrap();
        procs[&writer].ok("restock apple 1").await.unwrap();
        let m = procs[&4].ok("members").await.unwrap();
        assert!(Members::parse(&m).voters.contains(&victim), "{m}");
        // a voter leaves: removed at once, and the learner takes its place
        let leaving = procs
            .keys()
            .copied()
            .find(|i| *i != victim && *i != 4)
            .unwrap();
        let tl = Instant::now();
        procs[&leaving].ok("leave").await.unwrap();
        let observer = procs
            .keys()
            .copied()
            .find(|i| *i != leaving && *i != 4)
            .unwrap();
        procs[&observer]
            .wait_members(LONG, |m| !m.voters.contains(&leaving))
            .await
            .unwrap();
        eprintln!(
            "FIGURE leave -> removed from membership: {:?}",
            tl.elapsed()
        );
        let m = procs[&observer]
            .wait_members(LONG, |m| {
                m.voters.contains(&4) && !m.learners.contains(&leaving)
            })
            .await
            .unwrap();
        assert!(!m.learners.contains(&leaving), "{m:?}");
        procs.remove(&leaving).unwrap().quit().await;
        procs[&4].ok("restock apple 1").await.unwrap();
        assert_eq!(procs[&observer].ok("stock! apple").await.unwrap(), "12");
        // a node that left is never re-added, and cannot restart under its id
        let again = Proc::start(&spec(leaving, &url, &name, &dir.path().join(&name), &[])).await;
        let err = again.err().expect("a left node must be refused");
        assert!(err.contains("never reused"), "{err}");
        for (_, p) in procs {
            p.kill9().await;
        }
        redis_cleanup(&url, &format!("catga:{{{name}}}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_initializer_does_not_start_a_second_cluster_and_loses_nothing() {
    let url = shared_redis();
    let name = unique("sf_wiped");
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (1..=3)
        .map(|id| spec(id, &url, &name, dir.path(), &[]))
        .collect();
    let mut procs = start_all(specs.clone(), 7).await;
    for p in procs.values() {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .unwrap();
    }
    let record = redis_record(&url, &name, "cluster-id").await.unwrap();
    let mut acked = 0u32;
    for _ in 0..20 {
        procs[&2].ok("restock pear 1").await.unwrap();
        acked += 1;
    }
    // node 1 initialized the cluster: kill it, wipe its data dir, restart
    procs.remove(&1).unwrap().kill9().await;
    std::fs::remove_dir_all(&specs[0].data_dir).unwrap();
    // (while its old lease runs, the id is also held in the store: retry
    // past that, so that only the data-dir check can refuse it)
    let t = Instant::now();
    let err = loop {
        match Proc::start(&specs[0]).await {
            Ok(p) => {
                p.kill9().await;
                panic!("a node with a wiped data dir must be refused");
            }
            Err(e) if e.contains("held by another live process") && t.elapsed() < LONG => {}
            Err(e) => break e,
        }
    };
    assert!(err.contains("wiped or replaced"), "{err}");
    // a node killed -9 and restarted at once from its data dir resumes
    // (its previous life's lease is waited out)
    procs.remove(&3).unwrap().kill9().await;
    let p3 = Proc::start(&specs[2]).await.unwrap();
    p3.wait_for("stock pear", LONG, |s| s == acked.to_string())
        .await
        .unwrap();
    procs.insert(3, p3);
    // no second cluster: same record, the others serve, nothing lost
    assert_eq!(
        redis_record(&url, &name, "cluster-id").await.unwrap(),
        record
    );
    procs[&3].ok("restock pear 1").await.unwrap();
    acked += 1;
    for p in procs.values() {
        assert_eq!(p.ok("stock! pear").await.unwrap(), acked.to_string());
        let m = p.ok("members").await.unwrap();
        assert_eq!(Members::parse(&m).voters, [1, 2, 3], "{m}");
    }
    for (_, p) in procs {
        p.kill9().await;
    }
    redis_cleanup(&url, &format!("catga:{{{name}}}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_3_5_3_under_load_with_a_kill_and_the_store_stopped() {
    let mut server = ServerProcess::redis();
    let url = server.url();
    let name = unique("sf_grow");
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--voters", "5", "--remove-dead-after-ms", "4000"];
    let specs: Vec<Spec> = (1..=3)
        .map(|id| spec(id, &url, &name, dir.path(), &extra))
        .collect();
    let mut procs = start_all(specs, 11).await;
    for p in procs.values() {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .unwrap();
    }
    // a write load through node 2 for the whole test, counting acks;
    // node 3 observes (neither is ever killed)
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let p2 = procs.remove(&2).unwrap();
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if p2.ok("restock load 1").await.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            p2
        })
    };
    let obs = 3;
    // grow to 5 voters
    for id in 4..=5 {
        procs.insert(
            id,
            Proc::start(&spec(id, &url, &name, dir.path(), &extra))
                .await
                .unwrap(),
        );
    }
    procs[&obs]
        .wait_members(LONG, |m| m.voters == [1, 2, 3, 4, 5])
        .await
        .unwrap();
    // a 6th node waits as a learner
    procs.insert(
        6,
        Proc::start(&spec(6, &url, &name, dir.path(), &extra))
            .await
            .unwrap(),
    );
    let m = procs[&obs]
        .wait_members(LONG, |m| m.learners == [6] && m.leader.is_some())
        .await
        .unwrap();
    // the store stops for 10 s; meanwhile a voter is killed -9: the leader
    // if it is neither the writer nor the observer (so the reconciler must
    // carry on under a new leader), else node 5
    let leader = m.leader.unwrap_or(0);
    let victim = if leader == 2 || leader == obs {
        5
    } else {
        leader
    };
    server.kill();
    let outage = Instant::now();
    procs.remove(&victim).unwrap().kill9().await;
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    procs[&obs].ok("restock outage 1").await.unwrap();
    procs[&6]
        .wait_for("stock outage", LONG, |s| s == "1")
        .await
        .unwrap();
    procs[&obs]
        .wait_for("stock load", LONG, |s| {
            s.parse::<u32>().unwrap_or(0) > before
        })
        .await
        .unwrap();
    // the outage is the fault being tested: it lasts 10 s
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    assert!(
        acked.load(std::sync::atomic::Ordering::SeqCst) > before,
        "Raft must keep serving writes while the store is down"
    );
    server.start();
    // membership catches up: the dead voter goes, the learner takes over
    let expected: Vec<u64> = (1..=6).filter(|i| *i != victim).collect();
    procs[&obs]
        .wait_members(Duration::from_secs(60), |m| {
            m.voters == expected && m.learners.is_empty()
        })
        .await
        .unwrap();
    // shrink to 3: two voters leave
    let leaving: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|i| *i != 2 && *i != obs)
        .rev()
        .take(2)
        .collect();
    for id in &leaving {
        procs[id].ok("leave").await.unwrap();
        procs.remove(id).unwrap().quit().await;
    }
    let remaining: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|i| !leaving.contains(i))
        .collect();
    procs[&obs]
        .wait_members(LONG, |m| m.voters == remaining && m.learners.is_empty())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let p2 = writer.await.unwrap();
    let total = acked.load(std::sync::atomic::Ordering::SeqCst);
    // no acknowledged write lost
    let n: u32 = procs[&obs]
        .ok("stock! load")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= total, "{n} applied < {total} acknowledged");
    eprintln!(
        "grow 3->5->3: killed {victim} (leader {leader}), left {leaving:?}; {total} writes \
         acknowledged under load, {n} applied"
    );
    p2.kill9().await;
    for (_, p) in procs {
        p.kill9().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_processes_bootstrap_and_a_fourth_node_joins_as_learner() {
    let url = shared_nats();
    let name = unique("sf_nats");
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let specs = (1..=3)
        .map(|id| spec(id, &url, &name, dir.path(), &[]))
        .collect();
    let mut procs = start_all(specs, 3).await;
    for p in procs.values() {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .unwrap();
    }
    eprintln!(
        "FIGURE cold bootstrap of 3 processes on NATS: {:?}",
        t0.elapsed()
    );
    let leader = leader_of(&procs).await;
    let follower = procs.keys().copied().find(|i| *i != leader).unwrap();
    procs[&follower].ok("restock fig 3").await.unwrap();
    let p4 = Proc::start(&spec(4, &url, &name, dir.path(), &[]))
        .await
        .unwrap();
    p4.wait_for("stock fig", LONG, |s| s == "3").await.unwrap();
    p4.wait_members(LONG, |m| m.learners == [4]).await.unwrap();
    procs.insert(4, p4);
    for (_, p) in procs {
        p.kill9().await;
    }
    nats_cleanup(&url, &name).await;
}

/// Deletes the cluster's records (the records bucket never expires keys).
async fn nats_cleanup(url: &str, name: &str) {
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    for bucket in ["catga_discovery_records", "catga_discovery"] {
        let Ok(kv) = js.get_key_value(bucket).await else {
            continue;
        };
        let Ok(keys) = kv.keys().await else { continue };
        let keys: Vec<String> = futures::StreamExt::collect::<Vec<_>>(keys)
            .await
            .into_iter()
            .filter_map(|k| k.ok())
            .filter(|k| k.starts_with(&format!("{name}.")))
            .collect();
        for k in keys {
            let _ = kv.purge(k).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_learners_and_asked_for_dead_voters_are_removed_and_never_come_back() {
    let store = MemoryStore::new();
    let name = unique("dead");
    let dir = tempfile::tempdir().unwrap();
    let start = |id: u64| {
        let (store, name, path) = (store.clone(), name.clone(), dir.path().to_path_buf());
        async move {
            let b = catga::cluster()
                .node_id(id)
                .listen("127.0.0.1:0")
                .data_dir(path.join(format!("n{id}")))
                .secret("selfform-secret")
                .heartbeat_interval(Duration::from_millis(50))
                .election_timeout(Duration::from_millis(200), Duration::from_millis(400))
                .discovery(store)
                .cluster_name(name)
                .bootstrap_expect(3)
                .discovery_timings(Duration::from_millis(50), Duration::from_millis(500))
                .remove_learners_after(Duration::from_millis(300))
                .remove_dead_after(Duration::from_millis(300));
            b.start().await.unwrap()
        }
    };
    let mut nodes = vec![start(1).await, start(2).await, start(3).await];
    wait_formed(&nodes, 3).await.unwrap();
    nodes.push(start(4).await);
    nodes.push(start(5).await);
    wait_formed(&nodes, 3).await.unwrap();
    // learner 5 "crashes" (its lease passes): removed after 300 ms
    let five = nodes.pop().unwrap();
    five.shutdown().await;
    assert!(store.expire(&name, 5));
    let n1 = nodes[0].clone();
    let until = |pred: fn(&catga::Health) -> bool| {
        let n = n1.clone();
        async move {
            let deadline = tokio::time::Instant::now() + LONG;
            while !pred(&n.health()) {
                assert!(tokio::time::Instant::now() < deadline, "{:?}", n.health());
                n.health_changed(Duration::from_millis(50)).await;
            }
        }
    };
    until(|h| !h.learners.contains(&5) && !h.members.contains(&5)).await;
    // voter 3 "crashes": with remove_dead_after set it goes, and the
    // caught-up learner 4 takes its place
    let three = nodes.remove(2);
    three.shutdown().await;
    assert!(store.expire(&name, 3));
    until(|h| h.members == [1, 2, 4] && h.learners.is_empty()).await;
    // removed ids are recorded and refused at start
    let d = store.discovery(DiscoveryConfig::new(name.clone())).unwrap();
    for id in [3, 5] {
        assert!(
            d.read_record(&format!("removed-{id}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    let again = catga::cluster()
        .node_id(5)
        .listen("127.0.0.1:0")
        .data_dir(dir.path().join("n5"))
        .discovery(store.clone())
        .cluster_name(name.clone())
        .start()
        .await;
    assert!(
        matches!(again, Err(catga::Error::ClusterMismatch(ref m)) if m.contains("never reused")),
        "{again:?}"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

/// The discovery events a node sees are counted in its `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_events_are_counted_in_metrics() {
    let store = MemoryStore::new();
    let name = unique("metrics");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_mem(&store, &name, id, dir.path(), 3).await.unwrap());
    }
    wait_formed(&nodes, 3).await.unwrap();
    let http = catga::http::Http::new(nodes[0].clone());
    let app = http.routes().with_state(http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(catga::http::serve(listener, app));
    let count = |kind: &'static str| {
        let url = format!("{base}/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            let key = format!(r#"catga_discovery_events_total{{kind="{kind}"}} "#);
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    // it saw the two others (and itself) join
    assert!(count("joined").await >= 2.0);
    let left_before = count("left").await;
    // node 3 leaves: node 1 sees it go
    let leaving = nodes.pop().unwrap();
    leaving.leave().await.unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    while count("left").await <= left_before {
        assert!(tokio::time::Instant::now() < deadline, "no Left counted");
        nodes[0].health_changed(Duration::from_millis(100)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// With discovery, `members()` reports what the store says: every member
/// alive with the metadata it registered (`catga.cluster` is published only
/// through discovery), and a member whose lease expired as suspect, still a
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_take_liveness_and_metadata_from_discovery() {
    let store = MemoryStore::new();
    let name = unique("members");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_mem(&store, &name, id, dir.path(), 3).await.unwrap());
    }
    wait_formed(&nodes, 3).await.unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let ms = nodes[0].members();
        let ok = ms.len() == 3
            && ms
                .iter()
                .all(|m| m.liveness == catga::members::Liveness::Alive)
            && ms
                .iter()
                .filter(|m| m.id != 1)
                .all(|m| m.metadata.contains_key("catga.cluster"));
        if ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ms:#?}");
        nodes[0].health_changed(Duration::from_millis(100)).await;
    }
    // node 3 stops (no `leave`): its lease expires, it stays a member
    let gone = nodes.pop().unwrap();
    gone.shutdown().await;
    store.expire(&name, 3);
    loop {
        let ms = nodes[0].members();
        let three = ms.iter().find(|m| m.id == 3).map(|m| m.liveness);
        if three == Some(catga::members::Liveness::Suspect) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ms:#?}");
        nodes[0].health_changed(Duration::from_millis(100)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// A member restarted while the discovery store is down comes back: it
/// has Raft state, so it needs no store to resume; it serves (and catches
/// up) at once, says so in its health (`unregistered`), and registers when
/// the store returns. Before, `start()` failed while the store was
/// unreachable, so a cluster could not come back from a restart (a deploy,
/// a power cut) during a store outage.
async fn member_restarts_while_the_store_is_down(mut server: ServerProcess, redis: bool) {
    let url = server.url();
    let name = unique("sf_resume");
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (1..=3)
        .map(|id| spec(id, &url, &name, dir.path(), &[]))
        .collect();
    let mut procs = start_all(specs.clone(), 5).await;
    for p in procs.values() {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .unwrap();
    }
    let leader = leader_of(&procs).await;
    let victim = if leader == 3 { 2 } else { 3 };
    procs[&leader].ok("restock before 1").await.unwrap();
    procs.remove(&victim).unwrap().kill9().await;
    server.kill();
    let vspec = specs.iter().find(|s| s.id == victim).unwrap();
    let restarted = Proc::start(vspec).await.unwrap_or_else(|e| {
        panic!("node {victim} did not come back while the store was down: {e}")
    });
    procs[&leader].ok("restock during 1").await.unwrap();
    restarted
        .wait_for("stock during", LONG, |s| s == "1")
        .await
        .unwrap();
    restarted
        .wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
        .await
        .unwrap();
    let st = restarted.ok("status").await.unwrap();
    assert!(st.contains("unregistered=true"), "{st}");
    // leaving now would leave no removal record behind, so the id could be
    // re-added later with an empty log: refused, and the node stays a voter
    let refused = restarted
        .ok("leave")
        .await
        .expect_err("leave while the store has been down since start");
    assert!(refused.contains("once the store is back"), "{refused}");
    restarted
        .wait_members(LONG, |m| m.voters == [1, 2, 3])
        .await
        .unwrap();
    // the store returns (Redis: empty; NATS: with its records): the node
    // runs its checks and registers
    server.start();
    restarted
        .wait_for("status", LONG, |s| s.contains("unregistered=false"))
        .await
        .unwrap();
    if redis {
        // the records an empty store lost are back
        assert!(
            redis_record(&url, &name, &format!("node-{victim}"))
                .await
                .is_some(),
            "node {victim} registered without putting its record back"
        );
    }
    restarted.kill9().await;
    for (_, p) in procs {
        p.kill9().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_while_redis_is_down_resumes_and_registers_later() {
    member_restarts_while_the_store_is_down(ServerProcess::redis_volatile(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_while_nats_is_down_resumes_and_registers_later() {
    member_restarts_while_the_store_is_down(ServerProcess::nats(), false).await;
}
