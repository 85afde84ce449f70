//! The shop as an HTTP service: one OS process per node, each serving HTTP
//! on its own port, over a static 3-node cluster.
//!
//! `cargo run --example http_service` launches three node processes on
//! 127.0.0.1 (this same program with `--node`), with mutual TLS between
//! them (certificates from a development CA minted into the demo's temporary
//! directory, `--tls DIR`), drives them over real HTTP
//! (a restock through a follower, an order, a refused order, stock queries
//! on every node, `/ready`, `/metrics`, the admin routes: the members with
//! every node's HTTP address, a snapshot, a 401 without the token), kills
//! the leader with SIGKILL, orders again through a survivor, and prints a
//! checked summary line. It exits non-zero if a check fails.
//!
//! A node serves the admin routes (`/admin/members`, `/admin/leave`,
//! `DELETE /admin/members/{id}`, `/admin/snapshot`) when the environment
//! variable `CATGA_ADMIN_TOKEN` holds a token (16 or more visible ASCII
//! characters); the demo gives its nodes a random one. `examples/catga_ctl`
//! is a command line over those routes.
//!
//! Load over real HTTP from another process (the nodes are children):
//! `cargo run --release --example http_service -- --bench --connections 64 --seconds 10 [--via-follower]`
//! (reqwest, TLS between the nodes); `examples/http_bench` is the leaner
//! generator the benchmarks guide uses.
//!
//! One node by hand:
//!
//! ```text
//! cargo run --example http_service -- --node 1 --http 127.0.0.1:8081 \
//!     --raft 127.0.0.1:7001 --peer 2=127.0.0.1:7002 --peer 3=127.0.0.1:7003 --data-dir data/1
//! # off loopback, give every node the CA and its certificate: --tls DIR, with
//! # DIR/ca.pem, DIR/node-1.pem, DIR/node-1.key (see the security guide)
//! curl -s -XPOST localhost:8081/restock -d '{"sku":"apple","qty":5}'
//! curl -s -XPOST localhost:8081/orders  -d '{"reference":1,"sku":"apple","qty":2}'
//! curl -s 'localhost:8081/stock?sku=apple'
//! curl -s -i localhost:8081/ready
//! curl -s localhost:8081/metrics
//! # with CATGA_ADMIN_TOKEN set for the node:
//! curl -s -H "Authorization: Bearer $CATGA_ADMIN_TOKEN" localhost:8081/admin/members
//! ```

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use catga::http::{Admin, Http};
use catga_examples::static_node::{NodeArgs, free_addr, parse_node, write_dev_certs};
use catga_examples::{GetStock, PlaceOrder, Restock};
use serde_json::{Value, json};

/// The environment variable holding the admin token.
const TOKEN_VAR: &str = "CATGA_ADMIN_TOKEN";

/// One node: the cluster member and its HTTP server, until killed.
async fn run_node(a: NodeArgs) -> Result<(), String> {
    // the admin routes only with a token (a bad one stops the node here,
    // before it joins anything)
    let admin = match std::env::var_os(TOKEN_VAR) {
        Some(_) => Some(Admin::bearer_from_env(TOKEN_VAR).map_err(|e| e.to_string())?),
        None => None,
    };
    let tls = a.tls_config()?;
    let mut b = catga::cluster()
        .node_id(a.id)
        .listen(a.raft)
        .peers(a.peers)
        .data_dir(a.data_dir)
        .secret("http-demo-secret")
        // advertised to the others: `/admin/members` links every node
        .api_addr(&a.http);
    if let Some(tls) = tls {
        b = b.tls(tls);
    }
    let node = b.start().await.map_err(|e| e.to_string())?;
    let mut http = Http::new(node.clone());
    match admin {
        Some(admin) => http = http.admin(admin),
        None => tracing::info!("{TOKEN_VAR} is not set: no admin routes"),
    }
    let app = http
        .routes()
        .route("/restock", catga::http::command::<Restock>())
        .route("/orders", catga::http::command::<PlaceOrder>())
        .route("/stock", catga::http::query::<GetStock>())
        .with_state(http);
    let listener = tokio::net::TcpListener::bind(&a.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", a.http))?;
    tracing::info!(node = a.id, http = %a.http, "serving");
    // serves until the node stops (after `POST /admin/leave`, or a failed
    // disk), then exits with the reason once the last answer is sent
    let stopped = {
        let node = node.clone();
        async move {
            let _ = node.stopped().await;
        }
    };
    catga::http::serve_with_shutdown(listener, app, stopped)
        .await
        .map_err(|e| e.to_string())?;
    match node.stopped().await {
        catga::Error::ShutDown => Ok(()),
        e => Err(e.to_string()),
    }
}

struct Launched {
    children: Vec<Option<Child>>,
    http: Vec<String>,
    /// The admin token the nodes were given.
    token: String,
}

/// A random token of 32 hex digits (from the standard library's per-process
/// random hash keys: no extra dependency for a demo).
fn random_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let half = || RandomState::new().hash_one(Instant::now());
    format!("{:016x}{:016x}", half(), half())
}

impl Drop for Launched {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// Starts three node processes and waits until every one is ready; returns
/// them, the leader's id and how long forming took.
async fn launch(dir: &std::path::Path) -> Result<(Launched, usize, u128), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let raft: Vec<String> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let http: Vec<String> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let mut launched = Launched {
        children: Vec::new(),
        http: http.iter().map(|h| format!("http://{h}")).collect(),
        token: random_token(),
    };
    let tls = dir.join("tls");
    write_dev_certs(&tls, 1..=3)?;
    for i in 0..3usize {
        let mut cmd = Command::new(&exe);
        cmd.arg("--node")
            .arg((i + 1).to_string())
            .arg("--http")
            .arg(&http[i])
            .arg("--raft")
            .arg(&raft[i])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{}", i + 1)))
            .arg("--tls")
            .arg(&tls);
        for (j, r) in raft.iter().enumerate() {
            if j != i {
                cmd.arg("--peer").arg(format!("{}={r}", j + 1));
            }
        }
        // the children's logs: errors only, unless RUST_LOG says otherwise
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
        let child = cmd
            .env("RUST_LOG", level)
            .env(TOKEN_VAR, &launched.token)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        launched.children.push(Some(child));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    // every node ready (a leader known, caught up)
    let mut leader = None;
    for base in &launched.http {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/ready")).send().await
                && r.status() == 200
            {
                let h: Value = r.json().await.map_err(|e| e.to_string())?;
                leader = h["leader"].as_u64();
                break;
            }
            check(Instant::now() < deadline, "every node becomes ready")?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let formed_ms = started.elapsed().as_millis();
    let leader = leader.ok_or("no leader")? as usize;
    Ok((launched, leader, formed_ms))
}

async fn demo() -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut launched, leader, formed_ms) = launch(dir.path()).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let follower = (1..=3).find(|i| *i != leader).ok_or("no follower")?;
    let base = |i: usize| launched.http[i - 1].clone();

    let post = |url: String, body: Value| {
        let client = client.clone();
        async move {
            let r = client
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let v: Value = r.json().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, v))
        }
    };
    let (s, v) = post(
        format!("{}/restock", base(follower)),
        json!({"sku": "apple", "qty": 5}),
    )
    .await?;
    check(
        s == 200 && v == json!(5),
        "restock through a follower answers 200 and 5",
    )?;
    let (s, _) = post(
        format!("{}/orders", base(follower)),
        json!({"reference": 1, "sku": "apple", "qty": 2}),
    )
    .await?;
    check(s == 200, "an order is placed")?;
    let (s, v) = post(
        format!("{}/orders", base(follower)),
        json!({"reference": 2, "sku": "apple", "qty": 50}),
    )
    .await?;
    check(
        s == 422 && v == json!({"OutOfStock": {"left": 3}}),
        "an order beyond the stock is the handler's error, 422",
    )?;
    let metrics = client
        .get(format!("{}/metrics", base(follower)))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    check(
        metrics.contains(
            r#"catga_http_requests_total{message="shop.PlaceOrder",kind="command",status="422"} 1"#,
        ),
        "/metrics counts the refused order",
    )?;

    // the admin routes: 401 without the token; with it, every member and
    // its HTTP address (they arrive with the nodes' pings, within a
    // second), and a snapshot on demand
    let admin_url = |i: usize, path: &str| format!("{}/admin/{path}", base(i));
    let r = client
        .get(admin_url(follower, "members"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(r.status() == 401, "/admin/members without the token is 401")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let linked = loop {
        let members: Vec<Value> = client
            .get(admin_url(follower, "members"))
            .bearer_auth(&launched.token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let linked = members
            .iter()
            .filter(|m| {
                let id = m["id"].as_u64().unwrap_or(0) as usize;
                let api = m["api_addr"].as_str().map(|a| format!("http://{a}"));
                id >= 1 && api.as_deref() == launched.http.get(id - 1).map(String::as_str)
            })
            .count();
        if linked == 3 {
            break linked;
        }
        check(
            Instant::now() < deadline,
            "/admin/members shows every node's api_addr",
        )?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = client
        .post(admin_url(follower, "snapshot"))
        .bearer_auth(&launched.token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    check(r.status() == 200, "/admin/snapshot answers 200")?;
    let snap: Value = r.json().await.map_err(|e| e.to_string())?;
    let snapshot_index = snap["snapshot_index"].as_u64().unwrap_or(0);
    check(snapshot_index > 0, "the snapshot covers the orders")?;

    // SIGKILL the leader; order again through a survivor
    let killed = Instant::now();
    if let Some(mut c) = launched.children[leader - 1].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (s, _) = post(
        format!("{}/orders", base(follower)),
        json!({"reference": 3, "sku": "apple", "qty": 1}),
    )
    .await?;
    check(s == 200, "an order after the leader was killed")?;
    let failover_ms = killed.elapsed().as_millis();
    let mut stocks = Vec::new();
    for i in (1..=3).filter(|i| *i != leader) {
        let (s, v) = post(format!("{}/stock", base(i)), json!({"sku": "apple"})).await?;
        check(s == 200, "a stock query")?;
        stocks.push(v.to_string());
    }
    // a local read on the other survivor may lag by an entry: the leader's
    // answer above is linearizable through the log; compare after a write
    check(
        stocks.iter().any(|v| v == "2"),
        "the stock is 5 - 2 - 1 on the survivors",
    )?;
    Ok(format!(
        "http demo ok: formed_ms={formed_ms} failover_write_ms={failover_ms} stock_on_survivors={} \
         admin_members_linked={linked} admin_snapshot_index={snapshot_index}",
        stocks.join(",")
    ))
}

/// `--bench [--connections N] [--seconds D] [--via-follower]`: N clients,
/// each on its own keep-alive connection, POST restocks for D seconds.
async fn bench(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    let (mut conns, mut seconds, mut via_follower) = (64usize, 10.0f64, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connections" => {
                conns = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--connections takes a positive number")?
            }
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--seconds takes a positive number")?
            }
            "--via-follower" => via_follower = true,
            other => return Err(format!("unknown bench argument {other}")),
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (launched, leader, _) = launch(dir.path()).await?;
    let target = if via_follower { leader % 3 + 1 } else { leader };
    let url = format!("{}/restock", launched.http[target - 1]);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // one client per task: its own connection, kept alive
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let body = json!({"sku": format!("sku-{c}"), "qty": 1}).to_string();
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != 200 {
                    return Err(format!("status {}", r.status()));
                }
                let _ = r.bytes().await;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    drop(launched);
    Ok(format!(
        "http bench: connections={conns} via={} writes_per_s={:.0} p50_us={} p99_us={}",
        if via_follower { "follower" } else { "leader" },
        all.len() as f64 / seconds,
        pct(0.5),
        pct(0.99)
    ))
}

/// `--nodes-in-one HTTP1,HTTP2,HTTP3 RAFT1,RAFT2,RAFT3 DIR`: the three
/// nodes of the cluster in this one process (plain TCP between them), as
/// `examples/bench` runs them: `http_bench --one-process` measures the HTTP
/// door apart from the cost of three processes.
fn nodes_in_one(mut args: impl Iterator<Item = String>) -> Result<Vec<NodeArgs>, String> {
    let mut list = || -> Result<Vec<String>, String> {
        let v: Vec<String> = args
            .next()
            .ok_or("missing an address list")?
            .split(',')
            .map(String::from)
            .collect();
        if v.len() == 3 {
            Ok(v)
        } else {
            Err("three addresses, comma-separated".into())
        }
    };
    let (http, raft) = (list()?, list()?);
    let dir = args.next().ok_or("missing the data directory")?;
    Ok((0..3)
        .map(|i| NodeArgs {
            id: i as u64 + 1,
            http: http[i].clone(),
            raft: raft[i].clone(),
            peers: (0..3)
                .filter(|j| *j != i)
                .map(|j| (j as u64 + 1, raft[j].clone()))
                .collect(),
            data_dir: format!("{dir}/node-{}", i + 1),
            tls: None,
        })
        .collect())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--bench") {
        args.next();
        return match rt.block_on(bench(args)) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("http bench FAILED: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.peek().map(String::as_str) == Some("--nodes-in-one") {
        args.next();
        return match nodes_in_one(args) {
            Ok(nodes) => match rt.block_on(futures::future::try_join_all(
                nodes.into_iter().map(run_node),
            )) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("node: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!(
                    "usage: http_service --nodes-in-one HTTP1,HTTP2,HTTP3 RAFT1,RAFT2,RAFT3 DIR: {e}"
                );
                ExitCode::from(2)
            }
        };
    }
    if args.peek().is_some() {
        return match parse_node(args) {
            Ok(a) => match rt.block_on(run_node(a)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("node: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!(
                    "usage: http_service [--node N --http ADDR --raft ADDR --peer ID=ADDR... --data-dir DIR]: {e}"
                );
                ExitCode::from(2)
            }
        };
    }
    match rt.block_on(demo()) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("http demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
