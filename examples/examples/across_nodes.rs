//! Across nodes: members, `send_to`, queries routed by the route their type
//! declares, and `broadcast` next to `publish`, on a 3-node cluster in one
//! process (127.0.0.1, ephemeral ports, a temporary data dir).
//!
//! `cargo run --example across_nodes` walks through the API;
//! `cargo run --release --example across_nodes -- --bench [--seconds D]`
//! measures, with one client, the latency of a local query, the same read
//! routed by key, round robin and least loaded, and `send_to` the leader
//! (from a follower). The last line is
//! `across_nodes: local_p50_us=.. local_p99_us=.. key_p50_us=.. ...`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catga::Node;
use catga::members::Liveness;
use catga::prelude::*;

/// A replicated map of prices.
#[state(name = "across.prices")]
#[derive(Default)]
pub struct Prices {
    pub by_sku: BTreeMap<String, u32>,
}

/// Sets a price (a replicated write).
#[command(name = "across.SetPrice")]
pub struct SetPrice {
    pub sku: String,
    pub cents: u32,
}

/// A price, read on this node (no network).
#[query(name = "across.Price")]
pub struct Price {
    pub sku: String,
}

/// The same read, always answered by the node that owns the SKU's key
/// (rendezvous hashing over the live members: the same node from every
/// caller, so that node's caches stay warm).
#[query(name = "across.PriceByKey", route = key(sku))]
pub struct PriceByKey {
    pub sku: String,
}

/// The same read, spread over the members in turn.
#[query(name = "across.PriceAround", route = round_robin)]
pub struct PriceAround {
    pub sku: String,
}

/// The same read, on the less busy of two members picked at random.
#[query(name = "across.PriceLightest", route = least_loaded)]
pub struct PriceLightest {
    pub sku: String,
}

/// Drops a cache entry on every node now (a broadcast, not in the log).
#[event(name = "across.Invalidate")]
pub struct Invalidate {
    pub sku: String,
}

#[handler]
fn set_price(cmd: SetPrice, prices: &mut Prices) -> Option<u32> {
    prices.by_sku.insert(cmd.sku, cmd.cents)
}

#[handler]
fn price(q: Price, prices: &Prices) -> Option<u32> {
    prices.by_sku.get(&q.sku).copied()
}

#[handler]
fn price_by_key(q: PriceByKey, prices: &Prices) -> Option<u32> {
    prices.by_sku.get(&q.sku).copied()
}

#[handler]
fn price_around(q: PriceAround, prices: &Prices) -> Option<u32> {
    prices.by_sku.get(&q.sku).copied()
}

#[handler]
fn price_lightest(q: PriceLightest, prices: &Prices) -> Option<u32> {
    prices.by_sku.get(&q.sku).copied()
}

#[handler]
async fn invalidate(e: Invalidate, ctx: EventContext) {
    tracing::info!(node = ctx.node_id(), sku = %e.sku, "cache entry dropped");
}

async fn start(dir: &std::path::Path) -> Result<Vec<Node>, Box<dyn std::error::Error>> {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut b = catga::cluster()
            .node_id(id)
            .listener(l)
            .data_dir(dir.join(format!("n{id}")))
            .secret("across-nodes");
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                b = b.peer(j as u64 + 1, a.clone());
            }
        }
        nodes.push(b.start().await?);
    }
    nodes[0].wait_for_leader(Duration::from_secs(10)).await?;
    // every node sees the other two alive (the mediator's heartbeat)
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while n
            .members()
            .iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .count()
            < 3
        {
            if Instant::now() > deadline {
                return Err("members did not come alive".into());
            }
            n.health_changed(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

async fn tour(nodes: &[Node]) -> Result<(), Box<dyn std::error::Error>> {
    let me = &nodes[0];
    me.send(SetPrice {
        sku: "apple".into(),
        cents: 120,
    })
    .await?;
    for m in me.members() {
        println!(
            "member {} at {}: {:?}, {:?}, load {}",
            m.id, m.addr, m.role, m.liveness, m.load
        );
    }
    // a query on a chosen node (its state may lag this one's by a few entries)
    let on_3 = me
        .send_to(
            3,
            Price {
                sku: "apple".into(),
            },
        )
        .await?;
    println!("node 3 says apple costs {on_3:?}");
    // routed by the type's declared route
    println!(
        "by key: {:?}",
        me.send(PriceByKey {
            sku: "apple".into()
        })
        .await?
    );
    println!(
        "around: {:?}",
        me.send(PriceAround {
            sku: "apple".into()
        })
        .await?
    );
    // a node that is not a member: a distinct error, never re-sent elsewhere
    if let Err(e) = me
        .send_to(
            9,
            Price {
                sku: "apple".into(),
            },
        )
        .await
    {
        println!("send_to 9: {e}");
    }
    // best effort, now, with who got it; `publish` would be durable instead
    for d in me
        .broadcast(Invalidate {
            sku: "apple".into(),
        })
        .await?
    {
        println!("broadcast to node {}: {:?}", d.node, d.result);
    }
    Ok(())
}

/// The `p` percentile of nanosecond samples, in microseconds.
fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn measure<F, Fut>(seconds: f64, mut call: F) -> Result<(f64, f64, usize), catga::Error>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<u32>, catga::Error>>,
{
    let dur = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut i = 0u64;
    while start.elapsed() < dur {
        let t = Instant::now();
        std::hint::black_box(call(i).await?);
        lat.push(t.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        i += 1;
    }
    let n = lat.len();
    Ok((pct(&mut lat, 0.50), pct(&mut lat, 0.99), n))
}

async fn bench(nodes: &[Node], seconds: f64) -> Result<String, Box<dyn std::error::Error>> {
    let leader = nodes[0].wait_for_leader(Duration::from_secs(10)).await?;
    let via = nodes
        .iter()
        .find(|n| n.id() != leader)
        .ok_or("no follower")?;
    for i in 0..64 {
        nodes[0]
            .send(SetPrice {
                sku: format!("sku{i}"),
                cents: i,
            })
            .await?;
    }
    let sku = |i: u64| format!("sku{}", i % 64);
    let mut out = Vec::new();
    let (p50, p99, n) = measure(seconds, |i| via.send(Price { sku: sku(i) })).await?;
    out.push(format!(
        "local_p50_us={p50:.1} local_p99_us={p99:.1} local_n={n}"
    ));
    let (p50, p99, n) = measure(seconds, |i| via.send(PriceByKey { sku: sku(i) })).await?;
    out.push(format!("key_p50_us={p50:.1} key_p99_us={p99:.1} key_n={n}"));
    let (p50, p99, n) = measure(seconds, |i| via.send(PriceAround { sku: sku(i) })).await?;
    out.push(format!(
        "round_robin_p50_us={p50:.1} round_robin_p99_us={p99:.1} round_robin_n={n}"
    ));
    let (p50, p99, n) = measure(seconds, |i| via.send(PriceLightest { sku: sku(i) })).await?;
    out.push(format!(
        "least_loaded_p50_us={p50:.1} least_loaded_p99_us={p99:.1} least_loaded_n={n}"
    ));
    let (p50, p99, n) = measure(seconds, |i| via.send_to(leader, Price { sku: sku(i) })).await?;
    out.push(format!(
        "send_to_leader_p50_us={p50:.1} send_to_leader_p99_us={p99:.1} send_to_leader_n={n}"
    ));
    Ok(format!(
        "across_nodes: from_node={} {}",
        via.id(),
        out.join(" ")
    ))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: across_nodes [--bench [--seconds D]]";
    let mut bench_mode = false;
    let mut seconds = 5.0_f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => bench_mode = true,
            "--seconds" => match it.next().and_then(|s| s.parse::<f64>().ok()) {
                Some(s) if s > 0.0 && s.is_finite() => seconds = s,
                _ => {
                    eprintln!("--seconds takes a positive number; {usage}");
                    return std::process::ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument `{other}`; {usage}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let run = async {
        let dir = tempfile::tempdir()?;
        let nodes = start(dir.path()).await?;
        let r = if bench_mode {
            bench(&nodes, seconds).await.map(|line| println!("{line}"))
        } else {
            tour(&nodes).await
        };
        for n in &nodes {
            n.shutdown().await;
        }
        r
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("across_nodes failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
