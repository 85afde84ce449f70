//! HTTP load generator: starts the three node processes of an
//! `http_service` binary (plain TCP between the nodes, like `bench`; `--tls`
//! for mutual TLS), and sends `POST /restock` over keep-alive connections,
//! one request in flight per connection, for D seconds per phase.
//!
//! ```text
//! cargo run --release --example http_bench -- [--service PATH] [--connections 64,1]
//!     [--seconds D] [--via-follower] [--tls] [--get PATH] [--one-process]
//! ```
//!
//! `--get /health` sends `GET /health` instead of the writes: the door's own
//! round trip, without Raft (the figures still say `writes`).
//! `--one-process` runs the three nodes in one process (`http_service
//! --nodes-in-one`, this branch on), as `bench` does: the door's cost apart
//! from the cost of three processes.
//!
//! `--service` defaults to the `http_service` beside this binary; any
//! build of it whose `--node` command line matches works, so one generator
//! measures two builds alike (`examples/scripts/http-ab.sh`). Each phase
//! (`--connections 64,1`: 64 connections, then 1, on the same cluster)
//! prints
//! `http: connections=N via=leader writes_per_s=X p50_us=X p99_us=X errors=N cpu_us_per_write=X nodes_cpu_us_per_write=X target_cpu_us_per_write=X client_cpu_us_per_write=X`:
//! the CPU time (user + system, `/proc/PID/stat`) of the three node
//! processes and this generator together, of the nodes, of the node written
//! to alone, and of this generator, during the phase, divided by the
//! writes. On a 2-core machine the generator competes with the nodes for
//! the CPU; its own share is the last figure.
//!
//! The client is a few lines of HTTP/1.1 over a `TcpStream`, not an HTTP
//! library: the request's bytes are built once, the answer is read to its
//! `Content-Length`, and the whole generator runs on one thread (a
//! current-thread runtime), so it takes as little of the machine as `wrk`
//! would, without installing it or scripting a POST body in Lua.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use catga_examples::static_node::{free_addr, write_dev_certs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    service: std::path::PathBuf,
    connections: Vec<usize>,
    seconds: f64,
    via_follower: bool,
    tls: bool,
    /// `GET` this path instead of the writes (e.g. `/health`: the door's
    /// own round trip, no Raft).
    get: Option<String>,
    /// The three nodes in one process (`http_service --nodes-in-one`), as
    /// in `bench`: what the door costs apart from the process layout.
    one_process: bool,
}

const USAGE: &str = "usage: http_bench [--service PATH] [--connections N[,N...]] [--seconds D] \
                     [--via-follower] [--tls] [--get PATH] [--one-process]";

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut a = Args {
        service: exe.with_file_name("http_service"),
        connections: vec![64, 1],
        seconds: 6.0,
        via_follower: false,
        tls: false,
        get: None,
        one_process: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--service" => a.service = it.next().ok_or("--service takes a path")?.into(),
            "--connections" => {
                a.connections = it
                    .next()
                    .ok_or("--connections takes a list")?
                    .split(',')
                    .map(|v| v.parse().ok().filter(|n: &usize| *n > 0))
                    .collect::<Option<_>>()
                    .ok_or("--connections takes positive numbers, comma-separated")?
            }
            "--seconds" => {
                a.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--seconds takes a positive number")?
            }
            "--via-follower" => a.via_follower = true,
            "--tls" => a.tls = true,
            "--one-process" => a.one_process = true,
            "--get" => a.get = Some(it.next().ok_or("--get takes a path")?),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    Ok(a)
}

/// CPU time (user + system) of process `pid` so far, in µs (Linux; clock
/// ticks of 10 ms).
fn cpu_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

/// One keep-alive HTTP/1.1 connection with one request in flight.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Writes `request` (whole, with its headers) and reads the answer;
    /// returns its status and body.
    async fn call(&mut self, request: &[u8]) -> std::io::Result<(u16, &[u8])> {
        use std::io::{Error, ErrorKind};
        self.stream.write_all(request).await?;
        self.buf.clear();
        let (head_len, body_len) = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = &self.buf[..end];
                let len = content_length(head).ok_or_else(|| {
                    Error::new(ErrorKind::InvalidData, "an answer without Content-Length")
                })?;
                break (end + 4, len);
            }
            if self.read_more().await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        };
        while self.buf.len() < head_len + body_len {
            if self.read_more().await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
        let status = std::str::from_utf8(self.buf.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status line"))?;
        Ok((status, &self.buf[head_len..head_len + body_len]))
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        let len = self.buf.len();
        self.buf.resize(len + 4096, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        n
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// The node processes, killed when dropped.
struct Cluster {
    children: Vec<Child>,
    http: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn launch(a: &Args, dir: &std::path::Path) -> Result<(Cluster, usize), String> {
    let raft: Vec<String> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let http: Vec<String> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let mut cluster = Cluster {
        children: Vec::new(),
        http: http.clone(),
    };
    let tls = dir.join("tls");
    if a.tls {
        write_dev_certs(&tls, 1..=3)?;
    }
    if a.one_process {
        // one process, three nodes (`http_service --nodes-in-one ...`)
        let mut cmd = Command::new(&a.service);
        cmd.arg("--nodes-in-one")
            .arg(http.join(","))
            .arg(raft.join(","))
            .arg(dir);
        let child = cmd
            .env("RUST_LOG", "error")
            .env_remove("CATGA_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", a.service.display()))?;
        cluster.children.push(child);
    }
    for i in (0..3usize).filter(|_| !a.one_process) {
        let mut cmd = Command::new(&a.service);
        cmd.arg("--node")
            .arg((i + 1).to_string())
            .arg("--http")
            .arg(&http[i])
            .arg("--raft")
            .arg(&raft[i])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{}", i + 1)));
        if a.tls {
            cmd.arg("--tls").arg(&tls);
        }
        for (j, r) in raft.iter().enumerate() {
            if j != i {
                cmd.arg("--peer").arg(format!("{}={r}", j + 1));
            }
        }
        let child = cmd
            .env("RUST_LOG", "error")
            .env_remove("CATGA_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", a.service.display()))?;
        cluster.children.push(child);
    }
    // every node ready; the leader from the last one's /ready
    let mut leader = None;
    for addr in &http {
        let deadline = Instant::now() + Duration::from_secs(30);
        // the processes are starting: asked again after a doubling pause
        let mut pause = Duration::from_millis(5);
        loop {
            let answer = async {
                let mut c = Conn::open(addr).await.ok()?;
                let (status, body) = c.call(&get("/ready")).await.ok()?;
                let v: serde_json::Value = serde_json::from_slice(body).ok()?;
                (status == 200).then(|| v["leader"].as_u64())?
            };
            if let Some(l) = answer.await {
                leader = Some(l as usize);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node at {addr} not ready within 30 s"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
    let leader = leader.ok_or("no leader")?;
    Ok((cluster, leader))
}

struct Phase {
    latencies: Vec<u32>,
    errors: u64,
    elapsed: f64,
    nodes_cpu: Option<u64>,
    /// The node written to's share of `nodes_cpu`.
    target_cpu: Option<u64>,
    client_cpu: Option<u64>,
}

async fn phase(
    addr: &str,
    conns: usize,
    seconds: f64,
    pids: &[String],
    target: usize,
    get_path: Option<&str>,
) -> Result<Phase, String> {
    // connections opened before the clock starts
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(addr).await.map_err(|e| e.to_string())?);
    }
    let nodes_cpu = || pids.iter().map(|p| cpu_us(p)).sum::<Option<u64>>();
    let (nodes0, target0, client0) = (nodes_cpu(), cpu_us(&pids[target]), cpu_us("self"));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (c, mut conn) in opened.into_iter().enumerate() {
        let request = match get_path {
            Some(path) => get(path),
            None => post("/restock", &format!(r#"{{"sku":"sku-{c}","qty":1}}"#)),
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                let (status, _) = conn.call(&request).await.map_err(|e| e.to_string())?;
                if status == 200 {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
            }
            Ok::<_, String>((lat, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, err) = t.await.map_err(|e| e.to_string())??;
        latencies.extend(lat);
        errors += err;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (nodes1, target1, client1) = (nodes_cpu(), cpu_us(&pids[target]), cpu_us("self"));
    latencies.sort_unstable();
    Ok(Phase {
        latencies,
        errors,
        elapsed,
        nodes_cpu: nodes0.zip(nodes1).map(|(a, b)| b - a),
        target_cpu: target0.zip(target1).map(|(a, b)| b - a),
        client_cpu: client0.zip(client1).map(|(a, b)| b - a),
    })
}

async fn run(a: Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (cluster, leader) = launch(&a, dir.path()).await?;
    let target = if a.via_follower {
        leader % 3 + 1
    } else {
        leader
    };
    let addr = cluster.http[target - 1].clone();
    let pids: Vec<String> = cluster
        .children
        .iter()
        .map(|c| c.id().to_string())
        .collect();
    eprintln!(
        "leader {leader}; writing through node {target} ({addr}); node pids {}",
        pids.join(" ")
    );
    // the first write waits until the leader takes writes
    let mut c = Conn::open(&addr).await.map_err(|e| e.to_string())?;
    let warm = post("/restock", r#"{"sku":"warm-up","qty":1}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(5);
    while c.call(&warm).await.map_err(|e| e.to_string())?.0 != 200 {
        if Instant::now() > deadline {
            return Err("the leader took no write within 10 s".into());
        }
        // a refused write (no leader yet): again after a doubling pause
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    drop(c);
    for &conns in &a.connections {
        let own = if a.one_process { 0 } else { target - 1 };
        let p = phase(&addr, conns, a.seconds, &pids, own, a.get.as_deref()).await?;
        let n = p.latencies.len() as u64;
        let pct = |q: f64| {
            p.latencies
                .get(((p.latencies.len() as f64 - 1.0).max(0.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let per = |cpu: Option<u64>| match cpu {
            Some(us) if n > 0 => format!("{:.1}", us as f64 / n as f64),
            _ => "?".into(),
        };
        println!(
            "http: connections={conns} via={} writes_per_s={:.0} p50_us={} p99_us={} errors={} \
             cpu_us_per_write={} nodes_cpu_us_per_write={} target_cpu_us_per_write={} \
             client_cpu_us_per_write={}",
            if a.via_follower { "follower" } else { "leader" },
            n as f64 / p.elapsed,
            pct(0.50),
            pct(0.99),
            p.errors,
            per(p.nodes_cpu.zip(p.client_cpu).map(|(a, b)| a + b)),
            per(p.nodes_cpu),
            per(p.target_cpu),
            per(p.client_cpu),
        );
        if n == 0 {
            return Err(format!("no write succeeded ({} errors)", p.errors));
        }
    }
    drop(cluster);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // one thread: the generator takes at most one core from the nodes
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("http bench FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
