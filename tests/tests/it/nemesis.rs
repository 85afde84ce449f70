//! Partitions at the process level (issue 20 item 6, issue 24): node
//! processes in network namespaces joined by `catga_tests::netns`'s router,
//! whose links are cut, healed, slowed and made lossy, mixed with `kill -9`
//! and SIGSTOP/SIGCONT. The nemesis checks safety (nothing acknowledged
//! lost, nothing applied twice, replicas equal, each counter's history
//! linearizable) and prints what availability it saw; the slow-link and
//! cut-off-leader tests assert availability too.
//!
//! Root only (network namespaces); a non-root run prints one SKIPPED line
//! per test. The long soak: `NEMESIS_SECS=600 cargo test -p catga-tests
//! --test it nemesis::nemesis -- --nocapture` (see the operations guide).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use catga_tests::netns::Net;
use catga_tests::process::{Proc, Spec};
use tokio::time::Instant;

/// The port every node listens on (each has its own address).
const PORT: u16 = 7000;
/// The port of each node's HTTP door (on its namespace's loopback).
const HTTP: u16 = 8080;

/// A cluster of node processes, one per namespace.
struct NetCluster {
    net: Net,
    specs: Vec<Spec>,
    procs: Vec<Option<Arc<Proc>>>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for NetCluster {
    /// A failed test keeps its data dirs and the nodes' logs.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            println!("kept the nodes' data and logs in {:?}", d.keep());
        }
    }
}

impl NetCluster {
    async fn start(n: u64, args: &[&str]) -> NetCluster {
        let ids: Vec<u64> = (1..=n).collect();
        let net = Net::new(&ids).expect("network namespaces");
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = ids.iter().map(|i| net.addr(*i, PORT)).collect();
        let mut specs = Vec::new();
        for &id in &ids {
            let mut s = Spec::member(id, &addrs, dir.path());
            s.args = args.iter().map(|a| a.to_string()).collect();
            s.args
                .extend(["--http".to_string(), format!("127.0.0.1:{HTTP}")]);
            s.stderr = Some(dir.path().join(format!("n{id}.log")));
            specs.push(s);
        }
        let names: Vec<String> = ids.iter().map(|i| net.ns(*i)).collect();
        let starts = specs
            .iter()
            .zip(&names)
            .map(|(s, ns)| Proc::start_in(s, ns));
        let procs = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(|p| Some(Arc::new(p.expect("node starts"))))
            .collect();
        NetCluster {
            net,
            specs,
            procs,
            dir: Some(dir),
        }
    }

    fn proc(&self, id: u64) -> Option<Arc<Proc>> {
        self.procs[id as usize - 1].clone()
    }

    fn logs(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("?"))
    }

    /// Waits until some node names a leader that says it is ready.
    async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for p in self.procs.iter().flatten() {
                if let Ok(h) = p.ok("health").await {
                    let f: Vec<&str> = h.split_whitespace().collect();
                    if f.len() == 5 && f[0] == "Leader" && f[4] == "true" {
                        return p.id;
                    }
                }
            }
            if let Some(p) = self.procs.iter().flatten().next() {
                let _ = p.call("changed 100", Duration::from_secs(2)).await;
            }
        }
        panic!(
            "no ready leader within {timeout:?}; logs in {:?}",
            self.logs()
        );
    }
}

/// Latencies of acknowledged writes, and the unacknowledged count.
#[derive(Default)]
struct Load {
    ok: Vec<Duration>,
    failed: u64,
}

impl Load {
    fn report(&self, what: &str, elapsed: Duration) -> f64 {
        let mut l = self.ok.clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let rate = l.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{what}: {} writes acknowledged in {elapsed:.1?} ({rate:.0}/s), {} failed; p50 {:?} p99 {:?} max {:?}",
            l.len(),
            self.failed,
            pct(0.5),
            pct(0.99),
            l.last().copied().unwrap_or_default()
        );
        rate
    }
}

/// `clients` callers, spread over the nodes, each writing one at a time
/// for `dur`.
async fn load(c: &NetCluster, clients: usize, dur: Duration, key: &str) -> Load {
    let end = Instant::now() + dur;
    let procs: Vec<Arc<Proc>> = c.procs.iter().flatten().cloned().collect();
    let workers = (0..clients).map(|i| {
        let p = procs[i % procs.len()].clone();
        let key = format!("{key}{}", i % 4);
        async move {
            let mut out = Load::default();
            while Instant::now() < end {
                let t = Instant::now();
                match p
                    .call(&format!("restock {key} 1"), Duration::from_secs(15))
                    .await
                {
                    Some(s) if s.starts_with("ok") => out.ok.push(t.elapsed()),
                    _ => out.failed += 1,
                }
            }
            out
        }
    });
    let mut all = Load::default();
    for l in futures::future::join_all(workers).await {
        all.ok.extend(l.ok);
        all.failed += l.failed;
    }
    all
}

/// Issue 24 item 1: with every packet delayed 50 ms one way (plus up to
/// 20 ms of jitter and 1 % loss), a ~100-140 ms round trip, under the
/// election timeout but above the heartbeat interval, the cluster keeps
/// committing: under load, and after an idle spell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_lossy_link_keeps_committing() {
    if !Net::available("nemesis::slow_lossy_link_keeps_committing") {
        return;
    }
    let c = NetCluster::start(3, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    c.net
        .slow_all(Duration::from_millis(50), Duration::from_millis(20), 0.01);
    let dur = Duration::from_secs(8);
    let l = load(&c, 64, dur, "slow").await;
    let rate = l.report("64 clients, RTT ~100-140 ms, 1% loss", dur);
    assert!(
        rate > 20.0,
        "the cluster stopped committing over a slow link ({rate:.1} writes/s); logs in {:?}",
        c.logs()
    );
    // idle for longer than the election timeout: the leader's lease must
    // not lapse for good because heartbeats take longer than their interval
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dur = Duration::from_secs(4);
    let l = load(&c, 4, dur, "slow-after-idle").await;
    let rate = l.report("4 clients after 2 s idle, same link", dur);
    assert!(
        rate > 2.0,
        "after an idle spell the cluster stopped committing over a slow link \
         ({rate:.1} writes/s); logs in {:?}",
        c.logs()
    );
    println!("router: {:?}", c.net.counts());
}

/// The binary's election timeout (`Spec`'s default, 300..600 ms).
const ELECTION_MAX: Duration = Duration::from_millis(600);

/// Issue 24 item 3: a leader cut off from the others says, within an
/// election timeout, that it lost its quorum: `Health` (not ready, no
/// leader named, `lost_quorum`) and `/ready` (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_says_it_lost_its_quorum() {
    if !Net::available("nemesis::cut_off_leader_says_it_lost_its_quorum") {
        return;
    }
    let c = NetCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let lp = c.proc(leader).expect("leader runs");
    let (code, _) = c
        .net
        .http_get(leader, HTTP, "/ready")
        .await
        .expect("GET /ready");
    assert_eq!(code, 200, "the leader is ready before the cut");

    c.net.isolate(leader);
    let cut = Instant::now();
    let st = lp
        .wait_status(Duration::from_secs(10), |s| {
            s.get("ready") == "false" && s.get("lost_quorum") == "true"
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; logs in {:?}", c.logs()));
    let said = cut.elapsed();
    let (code, body) = c
        .net
        .http_get(leader, HTTP, "/ready")
        .await
        .expect("GET /ready");
    println!(
        "cut-off leader {leader}: said it lost its quorum {said:?} after the cut; /ready {code}; {}",
        st.get("not_ready")
    );
    assert_eq!(code, 503, "/ready of a leader without a quorum: {body}");
    assert_eq!(st.get("leader"), "none", "it names no leader: {}", st.0);
    // the lease counts from the last acknowledged heartbeat, at most a
    // heartbeat or two before the cut; the polling adds ~50 ms
    assert!(
        said <= ELECTION_MAX + Duration::from_millis(300),
        "a cut-off leader took {said:?} to say it lost its quorum (election timeout {ELECTION_MAX:?})"
    );

    // the others elect a leader; after the heal the old one follows it
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let other = c.proc(others[0]).expect("runs");
    other
        .wait_status(Duration::from_secs(20), |s| {
            s.get("ready") == "true"
                && s.get("leader") != "none"
                && s.get("leader") != leader.to_string()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; logs in {:?}", c.logs()));
    c.net.heal_all();
    let healed = Instant::now();
    let t = write_again(&lp, "cutoff", Duration::from_secs(30)).await;
    println!(
        "old leader {leader} after a {:?} cut: writes again {t:?} after the heal",
        healed.duration_since(cut)
    );
}

/// Writes through `p` until one is acknowledged; how long that took.
async fn write_again(p: &Proc, key: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Some(s) = p
            .call(&format!("restock {key} 1"), Duration::from_secs(2))
            .await
            && s.starts_with("ok")
        {
            return t.elapsed();
        }
    }
    panic!(
        "node {} did not write again within {timeout:?} of the heal",
        p.id
    );
}
