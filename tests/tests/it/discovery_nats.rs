//! Discovery on a real NATS (JetStream KV, nats-server 2.9): the server
//! this test process shares (`servers::shared_nats`: its own `nats-server
//! -js` child, or `NATS_URL`) for the scenarios, a private `nats-server -js`
//! child for the restart. Every test uses its own bucket and deletes it.

use std::sync::Arc;
use std::time::Duration;

use catga::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, HeartbeatService, LeaveReason, NatsDiscovery,
    NatsOptions, NodeInfo,
};
use catga_tests::discovery::*;
use catga_tests::servers::{ServerProcess, shared_nats, unique};

/// One test's cluster in its own bucket; deletes the bucket on drop.
struct Env {
    url: String,
    bucket: String,
    cluster: String,
    config: DiscoveryConfig,
}

impl Env {
    fn new(url: String, tag: &str) -> Env {
        catga_tests::harness::init_tracing();
        let cluster = unique(tag);
        Env {
            url,
            bucket: format!("b_{cluster}"),
            config: fast_config(&cluster),
            cluster,
        }
    }

    /// On the shared server of this test process.
    fn shared(tag: &str) -> Env {
        Env::new(shared_nats(), tag)
    }

    fn options(&self) -> NatsOptions {
        let mut options = NatsOptions::new(&self.url);
        options.bucket = self.bucket.clone();
        options
    }

    async fn connect(&self) -> Arc<dyn Discovery> {
        Arc::new(
            NatsDiscovery::connect(self.options(), self.config.clone())
                .await
                .expect("connect to nats"),
        )
    }

    async fn kv(&self) -> async_nats::jetstream::kv::Store {
        let client = async_nats::connect(self.url.as_str()).await.expect("nats");
        async_nats::jetstream::new(client)
            .get_key_value(self.bucket.as_str())
            .await
            .expect("bucket")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let (url, bucket) = (self.url.clone(), self.bucket.clone());
        // Drop cannot await: delete the bucket from a helper thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(url.as_str());
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await
                {
                    let _ = async_nats::jetstream::new(client)
                        .delete_key_value(bucket)
                        .await;
                }
            });
        })
        .join();
    }
}

macro_rules! env {
    ($tag:expr) => {
        Env::shared($tag)
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_update_and_graceful_leave_are_reported() {
    let env = env!("n_join");
    join_update_leave(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_left_within_the_lease() {
    let env = env!("n_crash");
    let detected = crash_is_reported_expired(|| env.connect(), &env.cluster).await;
    eprintln!(
        "nats: crash -> Left after {detected:?} (lease {:?})",
        env.config.lease
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_duplicate_id_is_refused() {
    let env = env!("n_dup");
    duplicate_id_is_refused(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_starts_with_the_current_members() {
    let env = env!("n_snap");
    watch_starts_with_a_snapshot(|| env.connect(), &env.cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_times_are_printed() {
    let env = env!("n_times");
    let t = timings(|| env.connect(), &env.cluster).await;
    eprintln!(
        "nats (heartbeat {:?}, lease {:?}): join->Joined {:?}, leave->Left {:?}, crash->Left {:?}",
        env.config.heartbeat_interval, env.config.lease, t.join, t.leave, t.crash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_at_start_is_a_clear_error_naming_the_url() {
    // no one listens there, and no other test is handed it
    let port = catga_tests::process::free_port();
    let dead = format!("nats://127.0.0.1:{port}");
    let mut options = NatsOptions::new(&dead);
    options.connect_timeout = Duration::from_secs(1);
    let err = NatsDiscovery::connect(options, DiscoveryConfig::new("c"))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, DiscoveryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_foreign_and_huge_entries_are_skipped() {
    let env = env!("n_garbage");
    let observer = env.connect().await; // creates the bucket
    let kv = env.kv().await;
    let c = &env.cluster;
    let huge = format!(
        r#"{{"id":79,"raft_addr":"{}","incarnation":1,"cluster":"{c}"}}"#,
        "x".repeat(40_000)
    );
    kv.put(format!("{c}.77"), b"\xff\xfe garbage".to_vec().into())
        .await
        .expect("put");
    kv.put(
        format!("{c}.78"),
        r#"{"id":78,"raft_addr":"a","incarnation":1,"cluster":"other"}"#.into(),
    )
    .await
    .expect("put");
    kv.put(format!("{c}.79"), huge.into()).await.expect("put");
    kv.put(format!("{c}.not-a-number"), "{}".into())
        .await
        .expect("put");
    kv.put(
        format!("{c}.80"),
        r#"{"id":81,"raft_addr":"a","incarnation":1,"cluster":"x"}"#.into(),
    )
    .await
    .expect("put");
    let mut watch = observer.watch().await.expect("watch");
    let info = NodeInfo::new(c, 1, "127.0.0.1:7001");
    let service = HeartbeatService::start(env.connect().await, info.clone(), || 0.0)
        .await
        .expect("start");
    expect(
        &mut watch,
        "Joined(1) and nothing before it",
        is_joined(1, info.incarnation),
    )
    .await;
    assert_eq!(observer.list().await.expect("list"), vec![info]);
    // garbage written while watching is skipped as well
    kv.put(format!("{c}.77"), "{still not json".into())
        .await
        .expect("put");
    service.shutdown().await.expect("shutdown");
    expect(&mut watch, "Left(1)", is_left(1, LeaveReason::Graceful)).await;
}

/// nats-server is killed and restarted (same store dir) while a watch runs;
/// meanwhile one node crashes and, after the restart, another joins. The
/// watch reports exactly those two transitions, then the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restart_during_a_watch_misses_and_doubles_nothing() {
    let mut server = ServerProcess::nats();
    let mut env = Env::new(server.url(), "n_restart");
    env.config = DiscoveryConfig::new(&env.cluster)
        .timings(Duration::from_millis(200), Duration::from_secs(2));
    let observer = env.connect().await;
    let mut watch = observer.watch().await.expect("watch");
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
    assert!(watch.resyncs() >= 1, "the watchdog re-created the watch");
}

/// Each heartbeat is exactly one write (one new revision of the node's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_heartbeat_is_one_write() {
    let env = env!("n_steady");
    let node = env.connect().await;
    node.register(NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001"))
        .await
        .expect("register");
    let kv = env.kv().await;
    let key = format!("{}.1", env.cluster);
    let before = kv
        .entry(&key)
        .await
        .expect("entry")
        .expect("registered")
        .revision;
    for _ in 0..20 {
        node.heartbeat(0.0).await.expect("heartbeat");
    }
    let after = kv
        .entry(&key)
        .await
        .expect("entry")
        .expect("registered")
        .revision;
    assert_eq!(after - before, 20);
    node.unregister().await.expect("unregister");
    let entry = kv
        .entry(&key)
        .await
        .expect("entry")
        .expect("a delete marker");
    assert_eq!(
        entry.operation,
        async_nats::jetstream::kv::Operation::Delete
    );
}

/// If another process rewrites our key with its incarnation, our next
/// heartbeat (a compare-and-set on our revision) is refused with
/// `DuplicateId`, not silently overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_finds_another_incarnation_is_refused() {
    let env = env!("n_hbdup");
    let node = env.connect().await;
    let info = NodeInfo::new(&env.cluster, 1, "127.0.0.1:7001");
    node.register(info.clone()).await.expect("register");
    let mut other = info.clone();
    other.incarnation = 4242;
    let kv = env.kv().await;
    kv.put(format!("{}.1", env.cluster), serde_json_like(&other).into())
        .await
        .expect("put");
    match node.heartbeat(0.0).await {
        Err(DiscoveryError::DuplicateId {
            holder: 4242, ours, ..
        }) => assert_eq!(ours, info.incarnation),
        other => panic!("expected DuplicateId, got {other:?}"),
    }
}

fn serde_json_like(n: &NodeInfo) -> String {
    format!(
        r#"{{"id":{},"raft_addr":"{}","incarnation":{},"cluster":"{}"}}"#,
        n.id, n.raft_addr, n.incarnation, n.cluster
    )
}
