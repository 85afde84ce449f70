//! Measures discovery's detection times with the default timings
//! (heartbeat 1 s, lease 3 s) on the Redis and NATS the environment names.
//!
//! `cargo run -p catga-examples --example discovery_times`
//! (`REDIS_URL`, `NATS_URL` default to 127.0.0.1:6379 and :4222; pass
//! `redis` or `nats` to run one backend; `ROUNDS=n` for more rounds). It
//! uses the cluster `discovery-times` (Redis keys `catga:{discovery-times}:*`,
//! NATS bucket `catga_discovery_times`), which stay behind, bounded.
//!
//! For each round, one watcher measures: a node starting → `Joined`, a
//! graceful unregister → `Left`, and a crash (heartbeats stop, no
//! unregister) → `Left`. The crash figure is measured from the start of the
//! node's last heartbeat, so it is the lease plus the detection delay.
//! Targets: join within 1 s, leave within 300 ms, crash within lease + 1 s.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catga::discovery::{
    Discovery, DiscoveryConfig, HeartbeatService, LeaveReason, MemberEvent, MemberWatch,
    NatsDiscovery, NatsOptions, NodeInfo, RedisDiscovery, RedisOptions,
};

/// Makes a new discovery handle (a new "process") for the measured cluster.
type Connect = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Discovery>>>>>;

async fn next_matching(
    watch: &mut MemberWatch,
    pred: impl Fn(&MemberEvent) -> bool,
) -> Result<(), String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), watch.next()).await {
            Ok(Some(e)) if pred(&e) => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("watch ended".into()),
            Err(_) => return Err("no event within 15 s".into()),
        }
    }
}

async fn measure(
    name: &str,
    connect: Connect,
    cluster: &str,
    rounds: u64,
    base: u64,
) -> Result<(), String> {
    let mut watch = connect().await.watch().await.map_err(|e| e.to_string())?;
    let (mut join, mut leave, mut crash) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let info = NodeInfo::new(cluster, base + 2 * round, "127.0.0.1:7000");
        let inc = info.incarnation;
        let node = connect().await;
        let started = Instant::now();
        let service = HeartbeatService::start(node, info, || 0.0)
            .await
            .map_err(|e| e.to_string())?;
        next_matching(
            &mut watch,
            |e| matches!(e, MemberEvent::Joined(n) if n.incarnation == inc),
        )
        .await?;
        join.push(started.elapsed());
        let left = Instant::now();
        service.shutdown().await.map_err(|e| e.to_string())?;
        next_matching(&mut watch, |e| {
            matches!(e, MemberEvent::Left { incarnation, reason: LeaveReason::Graceful, .. } if *incarnation == inc)
        })
        .await?;
        leave.push(left.elapsed());

        let info = NodeInfo::new(cluster, base + 2 * round + 1, "127.0.0.1:7000");
        let inc = info.incarnation;
        let node = connect().await;
        node.register(info).await.map_err(|e| e.to_string())?;
        next_matching(
            &mut watch,
            |e| matches!(e, MemberEvent::Joined(n) if n.incarnation == inc),
        )
        .await?;
        let crashed = Instant::now(); // the last heartbeat starts now
        node.heartbeat(0.0).await.map_err(|e| e.to_string())?;
        drop(node);
        next_matching(&mut watch, |e| {
            matches!(e, MemberEvent::Left { incarnation, reason: LeaveReason::Expired, .. } if *incarnation == inc)
        })
        .await?;
        crash.push(crashed.elapsed());
    }
    let show = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        let avg = v.iter().sum::<Duration>() / v.len().max(1) as u32;
        format!("min {min:.1?} avg {avg:.1?} max {max:.1?}")
    };
    println!(
        "{name:5} (heartbeat 1 s, lease 3 s, {rounds} rounds): join->Joined {}; leave->Left {}; crash->Left {}",
        show(&join),
        show(&leave),
        show(&crash)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let only = std::env::args().nth(1);
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // One cluster name for every run (its keys are reused, not piled up),
    // fresh node ids per run (a crashed node of the last run may still
    // hold its id for a lease).
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 1_000_000 * 1_000)
        .unwrap_or(0);
    let mut failed = false;
    if only.as_deref().is_none_or(|o| o == "redis") {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let cluster = "discovery-times".to_string();
        let config = DiscoveryConfig::new(&cluster);
        let connect: Connect = Box::new(move || {
            let (url, config) = (url.clone(), config.clone());
            Box::pin(async move {
                let d = RedisDiscovery::connect(RedisOptions::new(url), config)
                    .await
                    .expect("redis");
                Arc::new(d) as Arc<dyn Discovery>
            })
        });
        if let Err(e) = measure("redis", connect, &cluster, rounds, base).await {
            eprintln!("redis: {e}");
            failed = true;
        }
    }
    if only.as_deref().is_none_or(|o| o == "nats") {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let cluster = "discovery-times".to_string();
        let config = DiscoveryConfig::new(&cluster);
        let connect: Connect = Box::new(move || {
            let (url, config) = (url.clone(), config.clone());
            Box::pin(async move {
                let mut options = NatsOptions::new(url);
                options.bucket = "catga_discovery_times".into();
                let d = NatsDiscovery::connect(options, config).await.expect("nats");
                Arc::new(d) as Arc<dyn Discovery>
            })
        });
        if let Err(e) = measure("nats", connect, &cluster, rounds, base).await {
            eprintln!("nats: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
