//! A routine restart is not an intruder (issue 20, item 4): a node killed
//! with SIGKILL and restarted on its own data dir, while the discovery store
//! still holds its previous process's lease, is the same node. It takes its
//! registration over at once: no "duplicate node id" ERROR, no wait for the
//! old lease to pass.

use std::path::Path;
use std::time::{Duration, Instant};

use catga_tests::process::{Proc, Spec};
use catga_tests::servers::{shared_nats, shared_redis, unique};

const LONG: Duration = Duration::from_secs(30);
/// A lease much longer than a restart takes, so that waiting for it shows.
const LEASE_MS: u64 = 8_000;

fn spec(id: u64, url: &str, name: &str, dir: &Path) -> Spec {
    let mut s = Spec::discovered(id, url, name, 3, dir);
    s.args
        .extend(["--discovery-ms".to_string(), format!("500:{LEASE_MS}")]);
    s.stderr = Some(dir.join(format!("n{id}.log")));
    s
}

async fn restart_within_the_lease(url: &str, name: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let specs: Vec<Spec> = (1..=3).map(|id| spec(id, url, name, dir.path())).collect();
    let mut procs = Vec::new();
    for p in futures::future::join_all(specs.iter().map(Proc::start)).await {
        procs.push(p.expect("a node starts"));
    }
    for p in &procs {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .expect("three voters");
    }
    procs[0].ok("restock plum 4").await.expect("a write");

    // SIGKILL node 3 and start it again on its data dir at once: the store
    // still holds its lease for seconds
    let victim = procs.pop().expect("node 3");
    victim.kill9().await;
    let restarted_at = Instant::now();
    let again = Proc::start(&specs[2]).await.expect("node 3 restarts");
    let took = restarted_at.elapsed();
    again
        .wait_for("stock plum", LONG, |s| s == "4")
        .await
        .expect("the restarted node serves the write");
    procs[0].ok("restock plum 1").await.expect("a write");
    again
        .wait_for("stock plum", LONG, |s| s == "5")
        .await
        .expect("and the next one");

    let log = std::fs::read_to_string(dir.path().join("n3.log")).unwrap_or_default();
    assert!(
        !log.contains("duplicate node id"),
        "a restart on the same data dir was treated as an intruder:\n{log}"
    );
    assert!(
        took < Duration::from_millis(LEASE_MS / 2),
        "the restarted node waited {took:?} to start (lease {LEASE_MS} ms)"
    );
    eprintln!("FIGURE a SIGKILLed node restarted within its lease was ready after {took:?}");
    again.kill9().await;
    for p in procs {
        p.kill9().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_within_its_redis_lease_registers_at_once_without_an_error() {
    let url = shared_redis();
    let name = unique("restart_redis");
    restart_within_the_lease(&url, &name).await;
    cleanup_redis(&url, &format!("catga:{{{name}}}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_within_its_nats_lease_registers_at_once_without_an_error() {
    let url = shared_nats();
    let name = unique("restart_nats");
    restart_within_the_lease(&url, &name).await;
    cleanup_nats(&url, &name).await;
}

/// Deletes every Redis key under `prefix`.
async fn cleanup_redis(url: &str, prefix: &str) {
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

/// Deletes the cluster's keys (the records bucket never expires them).
async fn cleanup_nats(url: &str, name: &str) {
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
