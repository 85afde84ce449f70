//! Handlers that take the process down. A handler that recurses deeply runs
//! on the apply thread's large stack and does not; one that aborts (as a
//! failed allocation or a stack overflow does) kills every replica that
//! applies it. Each restarted node says at ERROR which entry it died
//! inside and runs it once more; a node that died in it twice stops before
//! it (`Health::poisoned`). When every member stops before it the cluster
//! quarantines it (every replica applies it as `ApplyError::Poisoned`);
//! when another member applied it, the entry is never skipped: the node
//! runs it again once restarted. A fixed program deployed in time runs it.

use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr, node_binary_v2};

const T: Duration = Duration::from_secs(20);

/// The applied index in a `health` answer.
fn applied_of(h: &str) -> u64 {
    h.split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// Restarts every node of `specs` that is not running (a process
/// supervisor's job, e.g. systemd's `Restart=always`) until `done` holds on
/// the running ones' `health`, or `timeout` passes. Returns the processes
/// and how many restarts it took.
async fn supervise(
    specs: &[Spec],
    mut procs: Vec<Option<Proc>>,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Result<(Vec<Proc>, usize), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut restarts = 0;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        for (s, p) in specs.iter().zip(procs.iter_mut()) {
            if let Some(q) = p.as_mut()
                && q.wait_exit(Duration::from_millis(20)).await.is_some()
            {
                *p = None;
            }
            if p.is_none() {
                restarts += 1;
                match Proc::start(s).await {
                    Ok(q) => *p = Some(q),
                    Err(e) if e.contains("exited before it was ready") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if procs.iter().all(Option::is_some) {
            let mut hs = Vec::new();
            for p in procs.iter().flatten() {
                let h = p.call("health", Duration::from_secs(2)).await;
                hs.push(
                    h.and_then(|h| h.strip_prefix("ok ").map(str::to_string))
                        .unwrap_or_default(),
                );
            }
            if done(&hs) {
                return Ok((procs.into_iter().flatten().collect(), restarts));
            }
            last = hs;
            // wait for a change in the first node's view (bounded)
            if let Some(p) = procs.iter().flatten().next() {
                let _ = p.call("changed 100", Duration::from_secs(2)).await;
            }
        }
    }
    Err(format!("never matched; last health: {last:?}"))
}

/// Waits until every node has applied as far as the furthest one, and
/// returns their fingerprints.
async fn fingerprints(procs: &[Proc]) -> Vec<String> {
    let mut max = 0;
    for p in procs {
        max = max.max(applied_of(&p.ok("health").await.unwrap()));
    }
    let mut prints = Vec::new();
    for p in procs {
        p.wait_health(T, |f| {
            f.len() == 5 && f[3].parse::<u64>().unwrap_or(0) >= max
        })
        .await
        .unwrap();
        prints.push(p.ok("fingerprint").await.unwrap());
    }
    prints
}

fn specs(dir: &std::path::Path) -> Vec<Spec> {
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    (1..=3)
        .map(|i| {
            let mut s = Spec::member(i, &addrs, dir);
            s.stderr = Some(dir.join(format!("n{i}.log")));
            s
        })
        .collect()
}

/// Waits until at least two of the nodes (a majority) died; checks that the
/// others have not applied `index`, and stops them. Returns who died.
async fn deaths(mut procs: Vec<Proc>, index: u64, dead: &[u64]) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + T;
    let mut died = dead.to_vec();
    while died.len() < 2 && tokio::time::Instant::now() < deadline {
        died = dead.to_vec();
        for p in &mut procs {
            // polls the children: there is no event to wait on
            if p.wait_exit(Duration::from_millis(50)).await.is_some() {
                died.push(p.id);
            }
        }
    }
    assert!(died.len() >= 2, "a majority aborted: {died:?}");
    for p in procs {
        if died.contains(&p.id) {
            continue;
        }
        if let Some(h) = p.call("health", Duration::from_secs(2)).await {
            let applied: u64 = h
                .split_whitespace()
                .nth(4)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            assert!(applied < index, "node {} skipped entry {index}: {h}", p.id);
        }
        p.kill9().await;
    }
    died
}

/// Starts every node and waits until node 1 knows a leader and is ready.
async fn start_ready(specs: &[Spec]) -> Vec<Proc> {
    let procs = start_all(specs).await;
    procs[0]
        .wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
        .await
        .expect("a leader and node 1 ready");
    procs
}

async fn start_all(specs: &[Spec]) -> Vec<Proc> {
    let mut procs = Vec::new();
    for s in specs {
        procs.push(Proc::start(s).await.unwrap());
    }
    procs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_recurses_deeply_does_not_overflow_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs(dir.path());
    let procs = start_ready(&specs).await;
    // ~8 MiB of stack: four times a tokio worker thread's
    procs[1].ok("deep 8192").await.unwrap();
    for p in &procs {
        assert_eq!(p.ok("stock! deep").await.unwrap(), "8192");
    }
    for p in procs {
        assert!(p.quit().await, "still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_died_inside_an_entry_says_which_at_restart_and_never_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs(dir.path());
    let procs = start_ready(&specs).await;
    procs[0].ok("restock apple 1").await.unwrap();
    // node 1 has applied everything committed so far: the poison entry is next
    assert_eq!(procs[0].ok("stock! apple").await.unwrap(), "1");
    let index: u64 = procs[0]
        .ok("health")
        .await
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        + 1;
    // every replica that learns the entry is committed applies it and
    // aborts (the last one may never learn it: whoever could tell it died)
    let answer = procs[0].call("abort", T).await;
    assert!(
        answer.as_ref().is_none_or(|a| a.starts_with("fail")),
        "no answer from a dead node: {answer:?}"
    );
    let died = deaths(procs, index, &[]).await;

    // restarted, each node that died says which entry it died inside, then
    // dies in it again (openraft may replay it before the node is up): no
    // node skips it
    let mut procs = Vec::new();
    let mut dead = Vec::new();
    for s in &specs {
        match Proc::start(s).await {
            Ok(p) => procs.push(p),
            Err(e) if e.contains("exited before it was ready") => dead.push(s.id),
            Err(e) => panic!("{e}"),
        }
    }
    let said = format!("stopped while applying log entry {index} (`tests.Abort`)");
    for s in specs.iter().filter(|s| died.contains(&s.id)) {
        let log = std::fs::read_to_string(s.stderr.as_ref().unwrap()).unwrap();
        assert!(log.contains(&said), "node {} says `{said}`: {log}", s.id);
    }
    deaths(procs, index, &dead).await;

    // fixed handler deployed: the entry is applied, once, on every node
    let fixed: Vec<Spec> = specs
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.binary = Some(node_binary_v2());
            s
        })
        .collect();
    let procs = start_all(&fixed).await;
    let mut prints = Vec::new();
    for p in &procs {
        p.wait_health(T, |f| {
            f.len() == 5 && f[4] == "true" && f[3].parse::<u64>().unwrap_or(0) >= index
        })
        .await
        .unwrap();
        assert_eq!(p.ok("stock! apple").await.unwrap(), "1");
    }
    let max = {
        let mut m = 0;
        for p in &procs {
            m = m.max(
                p.ok("health")
                    .await
                    .unwrap()
                    .split_whitespace()
                    .nth(3)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        m
    };
    for p in &procs {
        p.wait_health(T, |f| {
            f.len() == 5 && f[3].parse::<u64>().unwrap_or(0) >= max
        })
        .await
        .unwrap();
        prints.push(p.ok("fingerprint").await.unwrap());
    }
    assert!(
        prints.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {prints:?}"
    );
    for p in procs {
        p.quit().await;
    }
}

/// The index the next write gets, once node `p` has applied everything.
async fn next_index(p: &Proc) -> u64 {
    applied_of(&p.ok("health").await.unwrap()) + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_pill_that_kills_every_replica_is_quarantined_and_the_cluster_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs(dir.path());
    let procs = start_ready(&specs).await;
    procs[0].ok("restock apple 1").await.unwrap();
    assert_eq!(procs[0].ok("stock! apple").await.unwrap(), "1");
    let index = next_index(&procs[0]).await;
    // the caller's first send: every replica that applies it dies
    let answer = procs[0].call("abort-keyed order-1", T).await;
    assert!(
        answer.as_ref().is_none_or(|a| a.starts_with("fail")),
        "no answer from a dead node: {answer:?}"
    );
    deaths(procs, index, &[]).await;

    // restarted as a supervisor would: each runs the entry once more and
    // dies again, then stops before it; the leader quarantines it
    let started = std::time::Instant::now();
    let (procs, restarts) = supervise(
        &specs,
        vec![None, None, None],
        Duration::from_secs(60),
        |hs| {
            hs.iter().all(|h| {
                let f: Vec<&str> = h.split_whitespace().collect();
                f.len() == 5 && f[4] == "true" && applied_of(h) >= index
            })
        },
    )
    .await
    .inspect_err(|_| {
        // the nodes' logs say why
        for s in &specs {
            let log = std::fs::read_to_string(s.stderr.as_ref().unwrap()).unwrap_or_default();
            eprintln!("---- node {} ----\n{log}", s.id);
        }
    })
    .unwrap();
    let took = started.elapsed();
    eprintln!("quarantined after {restarts} starts in {took:?}");
    assert!(took < Duration::from_secs(45), "took {took:?}");
    for s in &specs {
        let log = std::fs::read_to_string(s.stderr.as_ref().unwrap()).unwrap();
        assert!(
            log.contains("stops before it (a poison pill)"),
            "node {} said it stopped before the entry: {log}",
            s.id
        );
    }
    for p in &procs {
        assert_eq!(p.ok("poisoned").await.unwrap(), "none");
    }

    // the caller's keyed retry, on any node, gets the quarantine
    for p in &procs {
        assert_eq!(
            p.call("abort-keyed order-1", T).await.as_deref(),
            Some(format!("poisoned {index}").as_str())
        );
    }
    // later commands apply normally, on every replica
    assert_eq!(procs[1].ok("restock apple 2").await.unwrap(), "3");
    for p in &procs {
        assert_eq!(p.ok("stock! apple").await.unwrap(), "3");
    }
    let prints = fingerprints(&procs).await;
    assert!(
        prints.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {prints:?}"
    );
    for p in procs {
        assert!(p.quit().await, "did not shut down cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_crashed_one_node_only_is_never_skipped_there_and_runs_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = specs(dir.path());
    // the entry crashes node 3 only (a host with too little memory)
    for s in &mut specs[..2] {
        s.args.push("--survive-abort".into());
    }
    let procs = start_ready(&specs).await;
    procs[0].ok("restock apple 1").await.unwrap();
    let index = next_index(&procs[0]).await;
    let mut procs = procs.into_iter();
    let (p1, p2, mut p3) = (
        procs.next().unwrap(),
        procs.next().unwrap(),
        procs.next().unwrap(),
    );
    assert_eq!(
        p1.call("abort-keyed order-2", T).await.as_deref(),
        Some("ok 1")
    );
    assert!(p3.wait_exit(T).await.is_some(), "node 3 died in the entry");

    // node 3 restarted (as a supervisor would) runs it once more, dies
    // again, then stops before it: up, not ready, poisoned, and the entry
    // is not quarantined, since nodes 1 and 2 applied it
    let started = std::time::Instant::now();
    // (a restarted node is not ready until it caught up, so "not ready"
    // may come before it ran the entry again and died: restart it until
    // it reports the entry poisoned)
    let (p3, poisoned) = loop {
        let (mut rest, _) = supervise(&specs[2..], vec![None], T * 2, |hs| {
            hs.iter()
                .all(|h| h.split_whitespace().nth(4) == Some("false"))
        })
        .await
        .unwrap();
        let mut p3 = rest.pop().unwrap();
        match p3
            .wait_for("poisoned", Duration::from_secs(5), |p| {
                p.contains("applied_on=1,2")
            })
            .await
        {
            Ok(p) => break (p3, p),
            Err(e) => {
                assert!(started.elapsed() < T * 4, "{e}");
                assert!(
                    p3.wait_exit(Duration::from_secs(1)).await.is_some(),
                    "node 3 is up, not poisoned: {e}"
                );
            }
        }
    };
    assert!(
        poisoned.starts_with(&format!("{index} tests.Abort crashes=2 promised=false")),
        "{poisoned}"
    );
    eprintln!(
        "node 3 stopped before entry {index} after {:?}",
        started.elapsed()
    );
    // it serves local reads of the state before the entry, once it has
    // applied up to it: the restarted node knows the poisoned entry from
    // its marker at once, the entries before it may still be replaying
    // (seen: "none" under load). Waited on the state itself: openraft's
    // applied index stays below the batch that holds the poisoned entry,
    // although the entries before it in that batch are applied. The
    // others take writes and answer the keyed retry with the entry's real
    // answer
    let stock = p3.wait_for("stock apple", T, |v| v == "1").await;
    assert_eq!(stock.as_deref(), Ok("1"), "node 3's state before the entry");
    assert_eq!(p2.ok("restock apple 1").await.unwrap(), "2");
    assert_eq!(
        p2.call("abort-keyed order-2", T).await.as_deref(),
        Some("ok 1")
    );
    let h = p3.ok("health").await.unwrap();
    assert!(
        h.ends_with("false"),
        "node 3 is not ready while stopped: {h}"
    );
    assert!(applied_of(&h) < index, "node 3 skipped entry {index}: {h}");

    // the host is fixed and node 3 restarted: it runs the entry, catches up
    // and ends equal to the others
    assert!(p3.quit().await, "node 3 shut down cleanly while stopped");
    let mut fixed = specs[2].clone();
    fixed.args.push("--survive-abort".into());
    let p3 = Proc::start(&fixed).await.unwrap();
    p3.wait_health(T, |f| f.len() == 5 && f[4] == "true")
        .await
        .unwrap();
    assert_eq!(p3.ok("poisoned").await.unwrap(), "none");
    assert_eq!(p3.ok("stock! apple").await.unwrap(), "2");
    let procs = vec![p1, p2, p3];
    let prints = fingerprints(&procs).await;
    assert!(
        prints.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {prints:?}"
    );
    for p in procs {
        assert!(p.quit().await, "did not shut down cleanly");
    }
}
