//! Load generator: a 3-node cluster on 127.0.0.1 with the durable log.
//!
//! `cargo run --release --example bench -- --clients 64 --seconds 10 [--via-follower] [--nodes 3] [--stages] [--snapshot-every N] [--tls]`
//!
//! N clients send commands for D seconds (to the leader, or through a
//! follower with `--via-follower`), then N clients run local queries for
//! D/2 seconds. The last line is
//! `bench: nodes=3 clients=N writes_per_s=X write_p50_us=X write_p99_us=X reads_per_s=X cpu_us_per_write=X`
//! (the CPU time of the whole process, all three nodes and the clients,
//! during the write phase, divided by the writes: the figure a loaded
//! machine disturbs least).
//!
//! `--stages` also records where the writes spent their time (see
//! `catga::testing::stages`) and prints one line per stage before it:
//! `stage: NAME count=N p50_us=X p99_us=X mean_us=X`. The three nodes run in
//! this one process, so the log, fsync, replication and apply stages count
//! the work of all three; recording costs a little, so compare throughput
//! figures only between runs that both have it on or both off.
//!
//! `--tls` runs the nodes with mutual TLS (certificates from a development
//! CA minted at start). Its cost is measured by running the same binary with
//! and without it in interleaved rounds: see the benchmarks guide.

use std::time::{Duration, Instant};

use catga::Node;
use catga_examples::kv::{Get, Put};

struct Args {
    nodes: usize,
    clients: usize,
    seconds: f64,
    via_follower: bool,
    stages: bool,
    snapshot_every: Option<u64>,
    tls: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 3,
        clients: 64,
        seconds: 10.0,
        via_follower: false,
        stages: false,
        snapshot_every: None,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => {
                a.clients = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--clients takes a positive number")?
            }
            "--seconds" => {
                a.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--seconds takes a positive number")?
            }
            "--via-follower" => a.via_follower = true,
            "--stages" => a.stages = true,
            "--snapshot-every" => {
                a.snapshot_every = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--snapshot-every takes a number of entries (0: never)")?,
                )
            }
            "--tls" => a.tls = true,
            "--nodes" => {
                a.nodes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--nodes takes a positive number")?
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: bench [--clients N] [--seconds D] [--via-follower] [--nodes N] [--stages] [--snapshot-every N] [--tls]"
                ));
            }
        }
    }
    Ok(a)
}

/// Resident set size of this process in KiB (Linux), for soak runs.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) this process has used so far, in µs (Linux,
/// `/proc/self/stat`, clock ticks of 10 ms): CPU per write is the figure
/// that a loaded machine disturbs least.
fn cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command name, which is in parentheses
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

/// A fixed-size latency histogram (µs): exact below 1,024 µs, then 64
/// buckets per power of two (under 2 % error), so a long soak run measures
/// the cluster's memory, not the benchmark's.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; 1024 + 64 * 32],
            total: 0,
        }
    }

    fn bucket(us: u64) -> usize {
        if us < 1024 {
            return us as usize;
        }
        let log = 63 - us.leading_zeros() as usize; // >= 10
        let sub = ((us >> (log - 6)) & 63) as usize;
        (1024 + (log - 10) * 64 + sub).min(1024 + 64 * 32 - 1)
    }

    fn value(bucket: usize) -> u64 {
        if bucket < 1024 {
            return bucket as u64;
        }
        let log = (bucket - 1024) / 64 + 10;
        let sub = ((bucket - 1024) % 64) as u64;
        (1u64 << log) + (sub << (log - 6))
    }

    fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    fn percentile(&self, p: f64) -> u64 {
        let rank = ((self.total as f64 - 1.0).max(0.0) * p).round() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::value(i);
            }
        }
        0
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(args: Args) -> Result<String, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let listeners: Vec<std::net::TcpListener> = (0..args.nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let ca = match args.tls {
        true => Some(catga::tls::DevCa::new()?),
        false => None,
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut b = catga::cluster()
            .node_id(id)
            .listener(l)
            .data_dir(dir.path().join(format!("n{id}")))
            .secret("bench");
        if let Some(n) = args.snapshot_every {
            b = b.snapshot_every(n);
        }
        if let Some(ca) = &ca {
            b = b.tls(ca.tls_config(id)?);
        }
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                b = b.peer(j as u64 + 1, a.clone());
            }
        }
        nodes.push(b.start().await?);
    }
    let leader = nodes[0].wait_for_leader(Duration::from_secs(10)).await?;
    // wait until the leader can take writes
    nodes[0].send(Put { key: 0, value: 0 }).await?;
    let target = if args.via_follower {
        nodes
            .iter()
            .find(|n| n.id() != leader)
            .ok_or("no follower")?
            .clone()
    } else {
        nodes
            .iter()
            .find(|n| n.id() == leader)
            .ok_or("no leader")?
            .clone()
    };
    eprintln!(
        "leader {leader}; sending through node {} with {} clients for {}s",
        target.id(),
        args.clients,
        args.seconds
    );

    let rss_start = rss_kib();
    if args.stages {
        catga::testing::stages::reset();
        catga::testing::stages::enable(true);
    }
    let dur = Duration::from_secs_f64(args.seconds);
    let cpu_start = cpu_us();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let n = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Histogram::new();
            let mut i = 0u64;
            while start.elapsed() < dur {
                let t = Instant::now();
                n.send(Put {
                    key: (c as u64) << 32 | (i % 1024),
                    value: i,
                })
                .await?;
                lat.record(t.elapsed().as_micros().min(u64::MAX as u128) as u64);
                i += 1;
            }
            Ok::<_, catga::Error>(lat)
        }));
    }
    let mut lat = Histogram::new();
    for t in tasks {
        lat.merge(&t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let writes_per_s = lat.total as f64 / elapsed;
    let cpu_per_write = match (cpu_start, cpu_us()) {
        (Some(a), Some(b)) if lat.total > 0 => format!("{:.1}", (b - a) as f64 / lat.total as f64),
        _ => "?".into(),
    };
    if args.stages {
        catga::testing::stages::enable(false);
        for s in catga::testing::stages::report() {
            println!(
                "stage: {:<16} count={} p50_us={} p99_us={} mean_us={:.1}",
                s.name, s.count, s.p50_us, s.p99_us, s.mean_us
            );
        }
    }

    let read_dur = dur / 2;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let n = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while start.elapsed() < read_dur {
                for k in 0..256u64 {
                    std::hint::black_box(
                        n.send(Get {
                            key: (c as u64) << 32 | k,
                        })
                        .await?,
                    );
                }
                count += 256;
            }
            Ok::<_, catga::Error>(count)
        }));
    }
    let mut reads = 0u64;
    for t in tasks {
        reads += t.await??;
    }
    let reads_per_s = reads as f64 / start.elapsed().as_secs_f64();
    // linearizable reads, one client, through the same node
    let mut lin = Vec::new();
    let lin_start = Instant::now();
    while lin_start.elapsed() < read_dur.min(Duration::from_secs(2)) {
        let t = Instant::now();
        std::hint::black_box(
            target
                .query(Get { key: 1 }, catga::Consistency::Linearizable)
                .await?,
        );
        lin.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    lin.sort_unstable();
    eprintln!(
        "linearizable reads (1 client): {} ops, p50_us={} p99_us={}",
        lin.len(),
        percentile(&lin, 0.50),
        percentile(&lin, 0.99)
    );
    eprintln!(
        "rss: start={} KiB end={} KiB",
        rss_start.map_or("?".into(), |v| v.to_string()),
        rss_kib().map_or("?".into(), |v| v.to_string())
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(format!(
        "bench: nodes={} clients={} writes_per_s={:.0} write_p50_us={} write_p99_us={} reads_per_s={:.0} cpu_us_per_write={}",
        args.nodes,
        args.clients,
        writes_per_s,
        lat.percentile(0.50),
        lat.percentile(0.99),
        reads_per_s,
        cpu_per_write
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
