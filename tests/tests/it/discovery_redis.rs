//! Discovery on a real Redis: the server this test process shares
//! (`servers::shared_redis`: its own `redis-server` child, or `REDIS_URL`)
//! for the scenarios, private `redis-server` children for restarts and
//! trimming.
//! Every test uses its own cluster name (so its own keys) and deletes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use catga::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, HeartbeatService, LeaveReason, MemberEvent,
    NodeInfo, RedisDiscovery, RedisOptions,
};
use catga_tests::discovery::*;
use catga_tests::servers::{ServerProcess, shared_redis, unique};

/// One test's cluster on one Redis; deletes the cluster's keys on drop.
struct Env {
    url: String,
    cluster: String,
    config: DiscoveryConfig,
    maxlen: usize,
}

impl Env {
    fn new(url: String, tag: &str) -> Env {
        catga_tests::harness::init_tracing();
        let cluster = unique(tag);
        Env {
            url,
            config: fast_config(&cluster),
            cluster,
            maxlen: 10_000,
        }
    }

    /// On the shared server of this test process.
    fn shared(tag: &str) -> Env {
        Env::new(shared_redis(), tag)
    }

    async fn redis(&self) -> RedisDiscovery {
        let mut options = RedisOptions::new(&self.url);
        options.stream_maxlen = self.maxlen;
        RedisDiscovery::connect(options, self.config.clone())
            .await
            .expect("connect to redis")
    }

    async fn connect(&self) -> Arc<dyn Discovery> {
        Arc::new(self.redis().await)
    }

    fn prefix(&self) -> String {
        format!("catga:{{{}}}", self.cluster)
    }

    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("raw redis connection")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let pattern = format!("{}:*", self.prefix());
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

macro_rules! env {
    ($tag:expr) => {
        Env::shared($tag)
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_update_and_graceful_leave_are_reported() {
    let env = env!("r_join");
    join_update_leave(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_left_within_the_lease_and_reaped_once() {
    let env = env!("r_crash");
    let detected = crash_is_reported_expired(|| env.connect(), &env.cluster).await;
    eprintln!(
        "redis: crash -> Left after {detected:?} (lease {:?})",
        env.config.lease
    );
    // Many processes ran the reaper; the stream holds one `left` for node 1.
    let entries: Vec<BTreeMap<String, String>> = {
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}:events", env.prefix()))
            .arg("-")
            .arg("+")
            .query(&mut env.raw())
            .expect("xrange");
        reply
            .into_iter()
            .map(|(_, fields)| fields.into_iter().collect())
            .collect()
    };
    let lefts = entries
        .iter()
        .filter(|e| {
            e.get("e").map(String::as_str) == Some("left")
                && e.get("id").map(String::as_str) == Some("1")
        })
        .count();
    assert_eq!(lefts, 1, "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_duplicate_id_is_refused() {
    let env = env!("r_dup");
    duplicate_id_is_refused(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_starts_with_the_current_members() {
    let env = env!("r_snap");
    watch_starts_with_a_snapshot(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_times_are_printed() {
    let env = env!("r_times");
    let t = timings(|| env.connect(), &env.cluster).await;
    eprintln!(
        "redis (heartbeat {:?}, lease {:?}): join->Joined {:?}, leave->Left {:?}, crash->Left {:?}",
        env.config.heartbeat_interval, env.config.lease, t.join, t.leave, t.crash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_at_start_is_a_clear_error_naming_the_url() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let err = RedisDiscovery::connect(RedisOptions::new(&dead), DiscoveryConfig::new("c"))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, DiscoveryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

use catga_tests::process::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_foreign_and_huge_entries_are_skipped() {
    let env = env!("r_garbage");
    let p = env.prefix();
    let mut raw = env.raw();
    let far = 99_999_999_999_999u64;
    let huge = format!(
        r#"{{"id":79,"raft_addr":"{}","incarnation":1,"cluster":"{}"}}"#,
        "x".repeat(40_000),
        env.cluster
    );
    let foreign = serde_like_info(78, "another-cluster");
    let () = redis::pipe()
        .cmd("ZADD")
        .arg(format!("{p}:members"))
        .arg(far)
        .arg("abc")
        .ignore()
        .cmd("ZADD")
        .arg(format!("{p}:members"))
        .arg(far)
        .arg(77)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{p}:members"))
        .arg(far)
        .arg(78)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{p}:members"))
        .arg(far)
        .arg(79)
        .ignore()
        .cmd("HSET")
        .arg(format!("{p}:node:77"))
        .arg("inc")
        .arg("1")
        .arg("info")
        .arg(&b"\xff\xfe garbage"[..])
        .ignore()
        .cmd("HSET")
        .arg(format!("{p}:node:78"))
        .arg("inc")
        .arg("1")
        .arg("info")
        .arg(&foreign)
        .ignore()
        .cmd("HSET")
        .arg(format!("{p}:node:79"))
        .arg("inc")
        .arg("1")
        .arg("info")
        .arg(&huge)
        .ignore()
        .query(&mut raw)
        .expect("write garbage");
    let observer = env.connect().await;
    let mut watch = observer.watch().await.expect("watch");
    // garbage on the stream too, after the watch's snapshot
    for fields in [
        vec!["e", "joined", "id", "80", "info", "{not json"],
        vec!["e", "bogus", "id", "81"],
        vec!["e", "left", "id", "not-a-number"],
        vec!["nothing", "useful"],
    ] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{p}:events"))
            .arg("*")
            .arg(fields)
            .query(&mut raw)
            .expect("xadd");
    }
    let info = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    let service = HeartbeatService::start(env.connect().await, info.clone(), || 0.0)
        .await
        .expect("start");
    let (event, _) = expect(
        &mut watch,
        "Joined(1) and nothing before it",
        is_joined(1, info.incarnation),
    )
    .await;
    assert!(matches!(event, MemberEvent::Joined(_)));
    assert_eq!(observer.list().await.expect("list"), vec![info]);
    service.shutdown().await.expect("shutdown");
    expect(&mut watch, "Left(1)", is_left(1, LeaveReason::Graceful)).await;
}

fn serde_like_info(id: u64, cluster: &str) -> String {
    format!(r#"{{"id":{id},"raft_addr":"127.0.0.1:1","incarnation":1,"cluster":"{cluster}"}}"#)
}

/// Redis is killed and restarted (same data dir, append-only file) while a
/// watch runs; meanwhile one node crashes, and another joins after. The
/// watch reports exactly those two transitions, then the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restart_during_a_watch_misses_and_doubles_nothing() {
    let mut server = ServerProcess::redis();
    let mut env = Env::new(server.url(), "r_restart");
    env.config = DiscoveryConfig::new(&env.cluster)
        .timings(Duration::from_millis(200), Duration::from_secs(2));
    let mut watch = env.connect().await.watch().await.expect("watch");
    let a = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    let b = NodeInfo::new(&env.cluster, 2, "127.0.0.1:7002");
    let sa = HeartbeatService::start(env.connect().await, a.clone(), || 0.0)
        .await
        .expect("a");
    let sb = HeartbeatService::start(env.connect().await, b.clone(), || 0.0)
        .await
        .expect("b");
    expect(&mut watch, "Joined(1)", is_joined(1, a.incarnation)).await;
    expect(&mut watch, "Joined(2)", is_joined(2, b.incarnation)).await;

    server.kill();
    drop(sb); // b crashes while the store is down
    server.start();
    let c = NodeInfo::new(&env.cluster, 3, "127.0.0.1:7003");
    let sc = HeartbeatService::start(env.connect().await, c.clone(), || 0.0)
        .await
        .expect("c");

    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_event(&mut watch, WAIT, "Left(2) and Joined(3)").await);
    }
    assert!(got.iter().any(is_left(2, LeaveReason::Expired)), "{got:?}");
    assert!(got.iter().any(is_joined(3, c.incarnation)), "{got:?}");
    assert!(!sa.is_finished(), "a kept heartbeating through the restart");
    // The next event is a's own leave: nothing was doubled or invented for a.
    sa.shutdown().await.expect("shutdown a");
    expect(
        &mut watch,
        "Left(1, Graceful)",
        is_left(1, LeaveReason::Graceful),
    )
    .await;
    sc.shutdown().await.expect("shutdown c");
    expect(
        &mut watch,
        "Left(3, Graceful)",
        is_left(3, LeaveReason::Graceful),
    )
    .await;
    assert_eq!(
        watch.resyncs(),
        0,
        "the persisted stream was resumed, not resynced"
    );
}

/// A watcher that falls behind a trimmed stream resynchronises from a
/// snapshot: its events stay consistent and end at the true membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_stream_is_resynced_from_a_snapshot() {
    let server = ServerProcess::redis();
    let mut env = Env::new(server.url(), "r_trim");
    env.maxlen = 10;
    let mut watch = env.connect().await.watch().await.expect("watch");
    let p = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    let sp = HeartbeatService::start(env.connect().await, p.clone(), || 0.0)
        .await
        .expect("p");
    expect(&mut watch, "Joined(1)", is_joined(1, p.incarnation)).await;

    // Stop reading while 1200 entries go by (the watch buffers 256 events),
    // then change the membership for real.
    let churn = env.redis().await;
    for i in 0..600 {
        churn
            .register(NodeInfo::new(&env.cluster, 100 + i % 5, "127.0.0.1:9"))
            .await
            .expect("churn");
        churn.unregister().await.expect("churn");
    }
    let q = NodeInfo::new(&env.cluster, 2, "127.0.0.1:7002");
    let sq = HeartbeatService::start(env.connect().await, q.clone(), || 0.0)
        .await
        .expect("q");
    sp.shutdown().await.expect("p leaves");

    // Replay what the watch says; every transition must be consistent.
    let mut replay = Replay::default();
    replay.members.insert(1, p.incarnation);
    replay
        .settle(&mut watch, &BTreeMap::from([(2, q.incarnation)]))
        .await;
    assert!(watch.resyncs() >= 1, "the watch must have noticed the gap");
    sq.shutdown().await.expect("q leaves");
    expect(&mut watch, "Left(2)", is_left(2, LeaveReason::Graceful)).await;
}

/// Redis restarts empty (no persistence) while a watch runs: the watch sees
/// its stream vanish, resynchronises from a snapshot, and ends with the true
/// membership: the live node back (it re-registers by itself), the node that
/// crashed meanwhile gone, each transition consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_data_is_resynced() {
    let mut server = ServerProcess::redis_volatile();
    let mut env = Env::new(server.url(), "r_wiped");
    env.config = DiscoveryConfig::new(&env.cluster)
        .timings(Duration::from_millis(100), Duration::from_millis(600));
    let mut watch = env.connect().await.watch().await.expect("watch");
    let a = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    let b = NodeInfo::new(&env.cluster, 2, "127.0.0.1:7002");
    let sa = HeartbeatService::start(env.connect().await, a.clone(), || 0.0)
        .await
        .expect("a");
    let sb = HeartbeatService::start(env.connect().await, b.clone(), || 0.0)
        .await
        .expect("b");
    let mut replay = Replay::default();
    let both = BTreeMap::from([(1, a.incarnation), (2, b.incarnation)]);
    replay.settle(&mut watch, &both).await;

    server.kill();
    drop(sb);
    server.start();
    let events = replay
        .settle(&mut watch, &BTreeMap::from([(1, a.incarnation)]))
        .await;
    assert!(
        events.iter().any(is_left(2, LeaveReason::Expired)),
        "{events:?}"
    );
    assert!(watch.resyncs() >= 1, "a lost stream means a resync");
    sa.shutdown().await.expect("shutdown a");
    let events = replay.settle(&mut watch, &BTreeMap::new()).await;
    assert!(
        events.iter().any(is_left(1, LeaveReason::Graceful)),
        "{events:?}"
    );
}

/// A steady heartbeat writes the lease only: nothing goes to the stream, so
/// watchers get no event per heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_heartbeats_write_nothing_to_the_stream() {
    let env = env!("r_steady");
    let node = env.redis().await;
    node.register(NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001"))
        .await
        .expect("register");
    for i in 0..20 {
        node.heartbeat(0.001 * i as f64).await.expect("heartbeat");
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{}:events", env.prefix()))
        .query(&mut env.raw())
        .expect("xlen");
    assert_eq!(len, 1, "only the join is on the stream");
    node.heartbeat(3.0).await.expect("heartbeat");
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{}:events", env.prefix()))
        .query(&mut env.raw())
        .expect("xlen");
    assert_eq!(len, 2, "a significant load change is one update");
    node.unregister().await.expect("unregister");
}

/// If another process rewrites our entry with its incarnation, our next
/// heartbeat is refused with `DuplicateId`, not silently overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_finds_another_incarnation_is_refused() {
    let env = env!("r_hbdup");
    let node = env.redis().await;
    let info = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    node.register(info.clone()).await.expect("register");
    let () = redis::cmd("HSET")
        .arg(format!("{}:node:1", env.prefix()))
        .arg("inc")
        .arg("4242")
        .query(&mut env.raw())
        .expect("hset");
    match node.heartbeat(0.0).await {
        Err(DiscoveryError::DuplicateId {
            holder: 4242, ours, ..
        }) => assert_eq!(ours, info.incarnation),
        other => panic!("expected DuplicateId, got {other:?}"),
    }
}
