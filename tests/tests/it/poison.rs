//! Handlers that take the process down. A handler that recurses deeply runs
//! on the apply thread's large stack and does not; one that aborts (as a
//! failed allocation or a stack overflow does) kills every replica that
//! applies it, and again on every restart: each restarted node must say at
//! ERROR which entry it died inside, must never skip it, and must apply it
//! once the handler is fixed.

use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr, node_binary_v2};

const T: Duration = Duration::from_secs(20);

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
    let procs = start_all(&specs).await;
    procs[0]
        .wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
        .await
        .unwrap();
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
    let procs = start_all(&specs).await;
    procs[0]
        .wait_health(T, |f| f.len() == 5 && f[2] != "none" && f[4] == "true")
        .await
        .unwrap();
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
