//! A discovery store that lost its records does not let a wiped node in
//! (issue 20, item 2): the cluster id and each member's data-dir
//! incarnation live in the members' data dirs, and the members write them
//! back, so a wiped node started with a member's id is refused at start as
//! before. Nodes are OS processes; the store is the shared Redis.

use std::time::Duration;

use catga_tests::process::{Proc, Spec};
use catga_tests::servers::{shared_redis, unique};

const LONG: Duration = Duration::from_secs(30);

async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(shared_redis()).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

async fn keys(prefix: &str) -> Vec<String> {
    let Some(mut conn) = redis().await else {
        return Vec::new();
    };
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
}

async fn delete_all(prefix: &str) {
    let Some(mut conn) = redis().await else {
        return;
    };
    for k in keys(prefix).await {
        let _: Result<(), _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
    }
}

async fn record(name: &str, record: &str) -> Option<String> {
    let mut conn = redis().await?;
    redis::cmd("GET")
        .arg(format!("catga:{{{name}}}:rec:{record}"))
        .query_async(&mut conn)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_store_lost_its_records_a_wiped_member_is_still_refused_at_start() {
    let url = shared_redis();
    let name = unique("store_lost");
    let prefix = format!("catga:{{{name}}}");
    let dir = tempfile::tempdir().expect("temp dir");
    let specs: Vec<Spec> = (1..=3)
        .map(|id| Spec::discovered(id, &url, &name, 3, dir.path()))
        .collect();
    let mut procs = Vec::new();
    for p in futures::future::join_all(specs.iter().map(Proc::start)).await {
        procs.push(p.expect("a node starts"));
    }
    for p in &procs {
        p.wait_members(LONG, |m| m.voters == [1, 2, 3] && m.leader.is_some())
            .await
            .expect("three voters");
    }
    procs[0].ok("restock fig 2").await.expect("a write");
    let wanted: Vec<Option<String>> = {
        let mut v = vec![record(&name, "cluster-id").await];
        for id in 1..=3 {
            v.push(record(&name, &format!("node-{id}")).await);
        }
        v
    };
    assert!(wanted.iter().all(Option::is_some), "{wanted:?}");

    // the store loses everything (a Redis restarted without its data)
    delete_all(&prefix).await;
    // the members write their records back
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let mut now = vec![record(&name, "cluster-id").await];
        for id in 1..=3 {
            now.push(record(&name, &format!("node-{id}")).await);
        }
        if now == wanted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the records never came back: {now:?}, wanted {wanted:?}"
        );
        procs[0].ok("changed 200").await.expect("node 1 answers");
    }

    // node 3's disk is replaced; it starts again under its id: refused
    let victim = procs.pop().expect("node 3");
    victim.kill9().await;
    std::fs::remove_dir_all(&specs[2].data_dir).expect("wipe");
    let again = Proc::start(&specs[2]).await;
    let err = again.err().expect("a wiped node 3 must not start");
    assert!(err.contains("wiped or replaced"), "{err}");
    // and the cluster is unchanged
    assert_eq!(procs[1].ok("stock! fig").await.expect("read"), "2");
    for p in procs {
        p.kill9().await;
    }
    delete_all(&prefix).await;
}
