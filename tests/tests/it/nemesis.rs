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

use catga_tests::linearizability::{self, Failure, Outcome, RegOp, RegOperation, RegOut, Register};
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
            // the nodes' addresses are not loopback: mutual TLS, as in production
            let tls = catga_tests::tls::write_files(&dir.path().join("tls"), id);
            s.args
                .extend(["--tls".to_string(), tls.display().to_string()]);
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

/// One client's recorded operations on the counters.
type History = Vec<RegOperation>;

/// The nemesis's clients: each picks a live node, increments a counter
/// (`restock`, which answers the new value) or reads it linearizably
/// (`stock!`), and records what it saw, until `stop`.
async fn clients(
    procs: Arc<std::sync::Mutex<Vec<Option<Arc<Proc>>>>>,
    n: usize,
    epoch: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> History {
    let workers = (0..n).map(|w| {
        let procs = procs.clone();
        let stop = stop.clone();
        async move {
            let mut h = History::new();
            let mut i = 0u64;
            while !*stop.borrow() {
                i += 1;
                let p = {
                    let g = procs.lock().expect("procs");
                    let live: Vec<_> = g.iter().flatten().cloned().collect();
                    live.get((w + i as usize) % live.len().max(1)).cloned()
                };
                let Some(p) = p else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let key = format!("k{}", i % 3);
                let read = i.is_multiple_of(5);
                let cmd = match read {
                    true => format!("stock! {key}"),
                    false => format!("restock {key} 1"),
                };
                let invoke = epoch.elapsed().as_nanos() as u64;
                let answer = p.call(&cmd, Duration::from_secs(12)).await;
                let complete = epoch.elapsed().as_nanos() as u64;
                let value = answer
                    .as_deref()
                    .and_then(|a| a.strip_prefix("ok "))
                    .map(|v| v.trim().to_string());
                let outcome = match (read, value) {
                    (true, Some(v)) if v == "none" => Outcome::Ok(RegOut::Get(None)),
                    (true, Some(v)) => match v.parse() {
                        Ok(n) => Outcome::Ok(RegOut::Get(Some(n))),
                        Err(_) => Outcome::Unknown,
                    },
                    (false, Some(v)) => match v.parse() {
                        Ok(n) => Outcome::Ok(RegOut::Incr(n)),
                        Err(_) => Outcome::Unknown,
                    },
                    (_, None) => Outcome::Unknown,
                };
                h.push(RegOperation {
                    client: w as u64,
                    key,
                    input: if read { RegOp::Get } else { RegOp::Incr(1) },
                    invoke,
                    complete,
                    outcome,
                    tag: i,
                });
            }
            h
        }
    });
    futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Issue 20 item 6: links cut and healed (a follower, the leader, a bridge,
/// the old leader in the minority, a flapping link, a slow lossy network),
/// `kill -9` and SIGSTOP, with clients writing and reading throughout.
/// Asserts safety: every counter's history linearizable, nothing
/// acknowledged lost, nothing applied twice, replicas equal at the end.
/// Prints the time until a node cut off silently for 10 s writes again
/// after the heal (issue 24 item 2's figure; not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis() {
    if !Net::available("nemesis::nemesis") {
        return;
    }
    let soak: u64 = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut c = NetCluster::start(3, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let epoch = Instant::now();
    let shared = Arc::new(std::sync::Mutex::new(c.procs.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let history = tokio::spawn(clients(shared.clone(), 6, epoch, stop_rx));
    let ms = Duration::from_millis;
    let mut heals: Vec<String> = Vec::new();

    let end = Instant::now() + Duration::from_secs(soak);
    let mut round = 0;
    loop {
        round += 1;
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap_or(1);

        // a follower cut off, healed
        step(&format!("round {round}: follower {follower} cut off"));
        c.net.isolate(follower);
        tokio::time::sleep(ms(3000)).await;
        c.net.heal_all();

        // the leader cut off: the majority elects another
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        step(&format!("round {round}: leader {leader} in the minority"));
        c.net.partition(&[&[leader], &other_two(leader)]);
        tokio::time::sleep(ms(3000)).await;
        c.net.heal_all();

        // a bridge: the two others cannot reach each other
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        let [a, b] = other_two(leader);
        step(&format!(
            "round {round}: {a} and {b} apart, {leader} the bridge"
        ));
        c.net.cut(a, b);
        tokio::time::sleep(ms(3000)).await;
        c.net.heal_all();

        // a flapping link between the leader and a follower
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        let f = other_two(leader)[0];
        step(&format!("round {round}: link {leader}-{f} flapping"));
        for i in 0u32..10 {
            if i.is_multiple_of(2) {
                c.net.cut(leader, f);
            } else {
                c.net.heal(leader, f);
            }
            tokio::time::sleep(ms(300)).await;
        }
        c.net.heal_all();

        // a slow, lossy network
        step(&format!("round {round}: every link 40-60 ms, 2% loss"));
        c.net.slow_all(ms(40), ms(20), 0.02);
        tokio::time::sleep(ms(4000)).await;
        c.net.slow_all(ms(0), ms(0), 0.0);

        // kill -9 a node, restart it from its data dir
        c.wait_leader(Duration::from_secs(30)).await;
        let victim = 1 + (round as u64 % 3);
        step(&format!("round {round}: kill -9 node {victim}, restart"));
        let p = shared.lock().expect("procs")[victim as usize - 1].take();
        c.procs[victim as usize - 1] = None;
        if let Some(p) = p.and_then(|p| Arc::try_unwrap(p).ok()) {
            p.kill9().await;
        } else {
            // a client still holds it for a call in flight: kill by pid
            kill_ns_processes(&c.net.ns(victim));
        }
        tokio::time::sleep(ms(1500)).await;
        let p = Arc::new(
            Proc::start_in(&c.specs[victim as usize - 1], &c.net.ns(victim))
                .await
                .expect("restart"),
        );
        c.procs[victim as usize - 1] = Some(p.clone());
        shared.lock().expect("procs")[victim as usize - 1] = Some(p);

        // SIGSTOP the leader, SIGCONT
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        step(&format!("round {round}: SIGSTOP leader {leader} for 2 s"));
        if let Some(p) = c.proc(leader) {
            p.stop();
            tokio::time::sleep(ms(2000)).await;
            p.resume();
        }

        // a silent cut of 10 s, then the time until the node writes again
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        for (who, id) in [("follower", other_two(leader)[0]), ("leader", leader)] {
            step(&format!(
                "round {round}: {who} {id} cut off silently for 10 s"
            ));
            c.net.isolate(id);
            tokio::time::sleep(Duration::from_secs(10)).await;
            c.net.heal_all();
            let healed = Instant::now();
            let p = c.proc(id).expect("runs");
            let t = write_again(&p, "heal", Duration::from_secs(60)).await;
            let line = format!(
                "{who} {id} cut off silently for 10 s: writes again {t:?} after the heal ({:?} by now)",
                healed.elapsed()
            );
            println!("{line}");
            heals.push(line);
        }
        if Instant::now() >= end {
            break;
        }
    }

    // the end: every link clean, every node up; wait until all agree
    c.net.heal_all();
    let _ = stop_tx.send(true);
    let history = history.await.expect("clients");
    c.wait_leader(Duration::from_secs(30)).await;
    let procs: Vec<Arc<Proc>> = c.procs.iter().flatten().cloned().collect();
    // a final write through every node: each has applied everything before
    for p in &procs {
        write_again(p, "final", Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let prints = loop {
        let mut prints = Vec::new();
        for p in &procs {
            prints.push(p.ok("fingerprint").await.unwrap_or_default());
        }
        if prints.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
            break prints;
        }
        let _ = procs[0].call("changed 200", Duration::from_secs(2)).await;
    };
    assert!(
        prints.windows(2).all(|w| w[0] == w[1]),
        "replicas differ at the end: {prints:?}; logs in {:?}",
        c.logs()
    );

    // nothing acknowledged lost, nothing applied twice
    for key in ["k0", "k1", "k2"] {
        let ops: Vec<&RegOperation> = history.iter().filter(|o| o.key == key).collect();
        let incr = |o: &&&RegOperation| o.input == RegOp::Incr(1);
        let acked: Vec<i64> = ops
            .iter()
            .filter(incr)
            .filter_map(|o| match o.outcome {
                Outcome::Ok(RegOut::Incr(v)) => Some(v),
                _ => None,
            })
            .collect();
        let unknown = ops.iter().filter(incr).filter(|o| !o.is_ok()).count() as i64;
        let mut distinct = acked.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            acked.len(),
            "{key}: two acknowledged increments returned the same value"
        );
        let fin: i64 = procs[0]
            .ok(&format!("stock {key}"))
            .await
            .expect("stock")
            .parse()
            .unwrap_or(0);
        println!(
            "{key}: {} increments acknowledged, {unknown} unknown, final value {fin}",
            acked.len()
        );
        assert!(
            fin >= acked.len() as i64 && distinct.last().is_none_or(|m| *m <= fin),
            "{key}: an acknowledged increment is lost (final {fin})"
        );
        assert!(
            fin <= acked.len() as i64 + unknown,
            "{key}: applied more increments ({fin}) than were sent and not refused"
        );
    }
    match linearizability::check(&Register, &history) {
        Ok(stats) => println!("linearizable: {stats:?}"),
        Err(Failure::GaveUp { key, ops, steps }) => {
            println!("linearizability of {key} not decided ({ops} ops, {steps} steps)")
        }
        Err(e) => panic!("not linearizable: {e}; logs in {:?}", c.logs()),
    }
    let (ok, unknown) =
        history.iter().fold(
            (0, 0),
            |(a, b), o| {
                if o.is_ok() { (a + 1, b) } else { (a, b + 1) }
            },
        );
    println!(
        "nemesis: {} operations ({ok} ok, {unknown} unknown) in {:?}; router {:?}",
        history.len(),
        epoch.elapsed(),
        c.net.counts()
    );
    for h in heals {
        println!("{h}");
    }
}

fn other_two(id: u64) -> [u64; 2] {
    let v: Vec<u64> = (1..=3).filter(|i| *i != id).collect();
    [v[0], v[1]]
}

fn step(what: &str) {
    println!("nemesis: {what}");
}

/// SIGKILL every process in the namespace `ns` (the node, when the test
/// cannot take its `Proc` back).
fn kill_ns_processes(ns: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output();
    if let Ok(out) = out {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
}

/// Issue 24 item 2: after a silent cut of 10 s (packets dropped, no reset),
/// a healed node writes again within one election timeout: a follower
/// (its writes are forwarded to the leader) and the old leader (it learns
/// of the new one). Before: 1.0-1.4 s (follower) and 0.4-1.0 s (leader),
/// openraft's replication backoff (up to 1 s) plus the transport's connect
/// retries (one SYN per 400 ms attempt, then up to 250 ms of backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_silently_writes_again_within_an_election_timeout_of_the_heal() {
    if !Net::available(
        "nemesis::a_node_cut_off_silently_writes_again_within_an_election_timeout_of_the_heal",
    ) {
        return;
    }
    let c = NetCluster::start(3, &[]).await;
    let mut took = Vec::new();
    for who in ["follower", "leader"] {
        let leader = c.wait_leader(Duration::from_secs(20)).await;
        let id = match who {
            "leader" => leader,
            _ => other_two(leader)[0],
        };
        let p = c.proc(id).expect("runs");
        write_again(&p, "silent", Duration::from_secs(10)).await;
        c.net.isolate(id);
        let cut = Instant::now();
        // the others go on: the cut-off node's connections go silent while
        // its peers write (a follower's forward connection stays idle)
        let others = other_two(id);
        let q = c.proc(others[0]).expect("runs");
        while cut.elapsed() < Duration::from_secs(10) {
            let _ = q
                .call("restock silent-others 1", Duration::from_secs(2))
                .await;
        }
        c.net.heal_all();
        let t = write_again(&p, "silent", Duration::from_secs(30)).await;
        println!("{who} {id} cut off silently for 10 s: writes again {t:?} after the heal");
        took.push((who, id, t));
    }
    for (who, id, t) in took {
        assert!(
            t <= ELECTION_MAX,
            "{who} {id} wrote again {t:?} after the heal (election timeout {ELECTION_MAX:?}); \
             logs in {:?}",
            c.logs()
        );
    }
}
