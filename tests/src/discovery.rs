//! Backend-independent discovery scenarios, run against Redis and NATS by
//! `tests/discovery_redis.rs` and `tests/discovery_nats.rs`. Every step
//! waits for the next event with a deadline, and checks it is the expected
//! one: an extra event (a doubled transition, an `Updated` per heartbeat)
//! fails the scenario.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catga::discovery::{
    Discovery, DiscoveryConfig, DiscoveryError, HeartbeatService, LeaveReason, MemberEvent,
    MemberWatch, NodeInfo,
};

/// Short timings so the suite stays fast: heartbeat 100 ms, lease 600 ms.
pub fn fast_config(cluster: &str) -> DiscoveryConfig {
    DiscoveryConfig::new(cluster).timings(Duration::from_millis(100), Duration::from_millis(600))
}

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The next event, or a panic naming `what` after `within`.
pub async fn next_event(watch: &mut MemberWatch, within: Duration, what: &str) -> MemberEvent {
    match tokio::time::timeout(within, watch.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("watch ended while waiting for {what}"),
        Err(_) => panic!("no event within {within:?} while waiting for {what}"),
    }
}

/// The next event, which must satisfy `pred`; returns it with the time it took.
pub async fn expect(
    watch: &mut MemberWatch,
    what: &str,
    pred: impl Fn(&MemberEvent) -> bool,
) -> (MemberEvent, Duration) {
    let start = Instant::now();
    let event = next_event(watch, WAIT, what).await;
    assert!(pred(&event), "expected {what}, got {event:?}");
    (event, start.elapsed())
}

pub fn is_joined(id: u64, incarnation: u64) -> impl Fn(&MemberEvent) -> bool {
    move |e| matches!(e, MemberEvent::Joined(n) if n.id == id && n.incarnation == incarnation)
}

pub fn is_left(id: u64, reason: LeaveReason) -> impl Fn(&MemberEvent) -> bool {
    move |e| matches!(e, MemberEvent::Left { id: i, reason: r, .. } if *i == id && *r == reason)
}

/// A load figure a test can change while the heartbeat service reads it.
#[derive(Debug, Clone, Default)]
pub struct Load(Arc<AtomicU64>);

impl Load {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn reader(&self) -> impl Fn() -> f64 + Send + Sync + 'static {
        let cell = self.0.clone();
        move || f64::from_bits(cell.load(Ordering::Relaxed))
    }
}

/// Replays a watch's events onto a member map, failing on any transition
/// that contradicts what came before (a doubled `Joined`, a `Left` or
/// `Updated` for a node not present).
#[derive(Debug, Default)]
pub struct Replay {
    pub members: std::collections::BTreeMap<u64, u64>,
}

impl Replay {
    pub fn apply(&mut self, event: &MemberEvent) {
        match event {
            MemberEvent::Joined(n) => {
                let before = self.members.insert(n.id, n.incarnation);
                assert!(before.is_none(), "doubled Joined: {n:?}");
            }
            MemberEvent::Updated(n) => {
                assert_eq!(
                    self.members.get(&n.id),
                    Some(&n.incarnation),
                    "Updated for unknown {n:?}"
                );
            }
            MemberEvent::Left {
                id, incarnation, ..
            } => {
                assert_eq!(
                    self.members.remove(id),
                    Some(*incarnation),
                    "Left for a node not known: {id}"
                );
            }
        }
    }

    /// Reads events until the members are `want`, checking each one.
    pub async fn settle(
        &mut self,
        watch: &mut MemberWatch,
        want: &std::collections::BTreeMap<u64, u64>,
    ) -> Vec<MemberEvent> {
        let mut seen = Vec::new();
        while &self.members != want {
            let event = next_event(watch, WAIT, &format!("members to become {want:?}")).await;
            self.apply(&event);
            seen.push(event);
        }
        seen
    }
}

/// Detection times measured by [`timings`].
#[derive(Debug)]
pub struct Times {
    pub join: Duration,
    pub leave: Duration,
    pub crash: Duration,
}

/// Join, insignificant load change (no event), metadata change and large
/// load change (`Updated`), graceful leave; `list` agrees along the way.
pub async fn join_update_leave<F, Fut>(connect: F, cluster: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Discovery>>,
{
    let observer = connect().await;
    let mut watch = observer.watch().await.expect("watch");
    let node = connect().await;
    let info = NodeInfo::new(cluster, 1, "127.0.0.1:7001").with_api_addr("127.0.0.1:8001");
    let load = Load::default();
    let service = HeartbeatService::start(node.clone(), info.clone(), load.reader())
        .await
        .expect("register");
    expect(&mut watch, "Joined(1)", is_joined(1, info.incarnation)).await;
    assert_eq!(observer.list().await.expect("list"), vec![info.clone()]);

    // Below the threshold: heartbeats carry it, nobody is told.
    load.set(0.05);
    let mut labelled = info.clone().with_metadata("zone", "a");
    labelled.load = 0.05;
    node.register(labelled.clone()).await.expect("re-register");
    let (event, _) = expect(&mut watch, "Updated(zone=a)", |e| {
        matches!(e, MemberEvent::Updated(n) if n.metadata.get("zone").map(String::as_str) == Some("a"))
    })
    .await;
    assert_eq!(event, MemberEvent::Updated(labelled));

    load.set(5.0);
    expect(&mut watch, "Updated(load=5)", |e| {
        matches!(e, MemberEvent::Updated(n) if n.load == 5.0 && n.metadata.contains_key("zone"))
    })
    .await;

    service.shutdown().await.expect("shutdown");
    expect(
        &mut watch,
        "Left(1, Graceful)",
        is_left(1, LeaveReason::Graceful),
    )
    .await;
    assert!(observer.list().await.expect("list").is_empty());
}

/// A node whose heartbeats stop (no unregister) is reported expired, on
/// every watcher, about a lease later; others are untouched.
pub async fn crash_is_reported_expired<F, Fut>(connect: F, cluster: &str) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Discovery>>,
{
    let observer = connect().await;
    let mut w1 = observer.watch().await.expect("watch");
    let mut w2 = connect().await.watch().await.expect("watch");
    let a = NodeInfo::new(cluster, 1, "127.0.0.1:7001");
    let b = NodeInfo::new(cluster, 2, "127.0.0.1:7002");
    let sa = HeartbeatService::start(connect().await, a.clone(), || 0.0)
        .await
        .expect("a");
    let sb = HeartbeatService::start(connect().await, b.clone(), || 0.0)
        .await
        .expect("b");
    for w in [&mut w1, &mut w2] {
        expect(w, "Joined(1)", is_joined(1, a.incarnation)).await;
        expect(w, "Joined(2)", is_joined(2, b.incarnation)).await;
    }
    let crashed = Instant::now();
    drop(sa); // the task is aborted: no unregister
    for w in [&mut w1, &mut w2] {
        expect(w, "Left(1, Expired)", is_left(1, LeaveReason::Expired)).await;
    }
    let detected = crashed.elapsed();
    let lease = observer.config().lease;
    assert!(
        detected >= lease / 2,
        "left after {detected:?}, before the lease {lease:?}"
    );
    assert_eq!(observer.list().await.expect("list"), vec![b.clone()]);
    sb.shutdown().await.expect("shutdown b");
    expect(
        &mut w1,
        "Left(2, Graceful)",
        is_left(2, LeaveReason::Graceful),
    )
    .await;
    detected
}

/// A second live process with the same id is refused; once the first one
/// is gone (its lease passed) a new incarnation may take the id.
pub async fn duplicate_id_is_refused<F, Fut>(connect: F, cluster: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Discovery>>,
{
    let mut watch = connect().await.watch().await.expect("watch");
    let first = NodeInfo::new(cluster, 5, "127.0.0.1:7005");
    let service = HeartbeatService::start(connect().await, first.clone(), || 0.0)
        .await
        .expect("first");
    expect(&mut watch, "Joined(5)", is_joined(5, first.incarnation)).await;

    let second = NodeInfo::new(cluster, 5, "127.0.0.1:7006");
    let impostor = connect().await;
    match impostor.register(second.clone()).await {
        Err(DiscoveryError::DuplicateId {
            id: 5,
            holder,
            ours,
            ..
        }) => {
            assert_eq!((holder, ours), (first.incarnation, second.incarnation));
        }
        other => panic!("a duplicate id must be refused, got {other:?}"),
    }
    assert!(!service.is_finished(), "the holder keeps running");

    drop(service); // the holder crashes
    expect(
        &mut watch,
        "Left(5, Expired)",
        is_left(5, LeaveReason::Expired),
    )
    .await;
    impostor
        .register(second.clone())
        .await
        .expect("the id is free again");
    expect(
        &mut watch,
        "Joined(5, new)",
        is_joined(5, second.incarnation),
    )
    .await;
    impostor.unregister().await.expect("unregister");
    expect(
        &mut watch,
        "Left(5, Graceful)",
        is_left(5, LeaveReason::Graceful),
    )
    .await;
}

/// A watch begins with every current member as `Joined`, exactly once.
pub async fn watch_starts_with_a_snapshot<F, Fut>(connect: F, cluster: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Discovery>>,
{
    let mut services = Vec::new();
    let mut incarnations = std::collections::BTreeMap::new();
    for id in 1..=3 {
        let info = NodeInfo::new(cluster, id, format!("127.0.0.1:{}", 7000 + id));
        incarnations.insert(id, info.incarnation);
        services.push(
            HeartbeatService::start(connect().await, info, || 0.0)
                .await
                .expect("start"),
        );
    }
    let observer = connect().await;
    let mut watch = observer.watch().await.expect("watch");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 1..=3 {
        match next_event(&mut watch, WAIT, "snapshot Joined").await {
            MemberEvent::Joined(n) => assert!(seen.insert(n.id, n.incarnation).is_none()),
            other => panic!("expected a snapshot Joined, got {other:?}"),
        }
    }
    assert_eq!(seen, incarnations);
    for service in services {
        service.shutdown().await.expect("shutdown");
    }
    for _ in 1..=3 {
        let event = next_event(&mut watch, WAIT, "Left").await;
        assert!(
            matches!(
                event,
                MemberEvent::Left {
                    reason: LeaveReason::Graceful,
                    ..
                }
            ),
            "{event:?}"
        );
    }
}

/// join → Joined, leave → Left, crash → Left, as one watcher sees them.
pub async fn timings<F, Fut>(connect: F, cluster: &str) -> Times
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Discovery>>,
{
    let mut watch = connect().await.watch().await.expect("watch");
    let a = NodeInfo::new(cluster, 11, "127.0.0.1:7011");
    let node = connect().await;
    let started = Instant::now();
    let service = HeartbeatService::start(node, a.clone(), || 0.0)
        .await
        .expect("start");
    expect(&mut watch, "Joined", is_joined(11, a.incarnation)).await;
    let join = started.elapsed();
    let left = Instant::now();
    service.shutdown().await.expect("shutdown");
    expect(&mut watch, "Left", is_left(11, LeaveReason::Graceful)).await;
    let leave = left.elapsed();
    let b = NodeInfo::new(cluster, 12, "127.0.0.1:7012");
    let service = HeartbeatService::start(connect().await, b.clone(), || 0.0)
        .await
        .expect("b");
    expect(&mut watch, "Joined", is_joined(12, b.incarnation)).await;
    let crashed = Instant::now();
    drop(service);
    expect(&mut watch, "Left", is_left(12, LeaveReason::Expired)).await;
    Times {
        join,
        leave,
        crash: crashed.elapsed(),
    }
}
