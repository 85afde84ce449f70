//! The self-forming cluster demo shared by `examples/redis_cluster.rs` and
//! `examples/nats_cluster.rs`: a launcher that runs each node as a child OS
//! process of itself (`--node N`), and the child's side.
//!
//! The launcher starts three nodes at once and times the bootstrap, writes
//! through a follower, kills a voter with SIGKILL and keeps writing, starts
//! a fourth node (a learner, reading the latest write locally), has a voter
//! leave (the learner takes its place), and ends with a checked summary
//! line; it exits non-zero if a check fails.
//!
//! A child reads one command per line on stdin and answers one line on
//! stdout: `restock SKU N`, `stock SKU` (local), `stock! SKU`
//! (linearizable), `members`, `wait-members VOTERS LEARNERS`,
//! `wait-stock SKU N`, `wait-gone ID`, `leave`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use catga::{Consistency, Node};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::{GetStock, Restock};

/// How long any wait of the demo may take.
const WAIT: Duration = Duration::from_secs(30);

/// Runs the demo for `backend` (`redis` or `nats`), whose store is at the
/// URL in `env_var` (else `default_url`). With `--node N ...` arguments it
/// is one node (a child); otherwise the launcher.
pub async fn main(backend: &'static str, env_var: &str, default_url: &str) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--node") {
        return match child(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("fail {e}");
                ExitCode::FAILURE
            }
        };
    }
    let url = std::env::var(env_var).unwrap_or_else(|_| default_url.to_string());
    match launch(backend, &url).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------- the child: one node ----------

async fn child(args: &[String]) -> Result<(), String> {
    let get = |flag: &str| -> Result<String, String> {
        let i = args
            .iter()
            .position(|a| a == flag)
            .ok_or(format!("missing {flag}"))?;
        args.get(i + 1)
            .cloned()
            .ok_or(format!("{flag} needs a value"))
    };
    let id: u64 = get("--node")?.parse().map_err(|e| format!("--node: {e}"))?;
    let url = get("--url")?;
    let source = if url.starts_with("nats://") {
        catga::discovery::nats(url)
    } else {
        catga::discovery::redis(url)
    };
    // the one call: discovery, heartbeats, bootstrap / join / resume
    let node = catga::cluster()
        .node_id(id)
        .listen("127.0.0.1:0")
        .data_dir(PathBuf::from(get("--dir")?).join(format!("node-{id}")))
        .secret("demo-secret")
        .discovery(source)
        .cluster_name(get("--cluster")?)
        .bootstrap_expect(3)
        .discovery_timings(Duration::from_millis(250), Duration::from_secs(1))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    println!("ready {}", node.local_addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let out = match answer(&node, &line).await {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        println!("{out}");
        if line.trim() == "leave" {
            return Ok(());
        }
    }
    node.shutdown().await;
    Ok(())
}

fn members(node: &Node) -> String {
    let h = node.health();
    format!(
        "voters={:?} learners={:?} leader={}",
        h.members,
        h.learners,
        h.leader.map(|l| l.to_string()).unwrap_or("none".into())
    )
}

/// Waits (on the node's own change notifications) until `pred` holds.
async fn wait_until(node: &Node, what: &str, pred: impl Fn(&Node) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !pred(node) {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {WAIT:?} ({})", members(node)));
        }
        node.health_changed(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn local_stock(node: &Node, sku: &str) -> Option<u32> {
    node.read_state::<crate::Shop, _>(|s| s.stock.get(sku).copied())
        .flatten()
}

async fn answer(node: &Node, line: &str) -> Result<String, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        w.get(i)
            .ok_or("missing number")?
            .parse()
            .map_err(|e| format!("{e}"))
    };
    let sku =
        |i: usize| -> Result<String, String> { Ok(w.get(i).ok_or("missing sku")?.to_string()) };
    let e = |e: catga::Error| e.to_string();
    match w.first().copied() {
        Some("restock") => {
            let left = node
                .send(Restock {
                    sku: sku(1)?,
                    qty: num(2)? as u32,
                })
                .await
                .map_err(e)?;
            Ok(left.to_string())
        }
        Some(q @ ("stock" | "stock!")) => {
            let c = if q == "stock!" {
                Consistency::Linearizable
            } else {
                Consistency::Local
            };
            let v = node.query(GetStock { sku: sku(1)? }, c).await.map_err(e)?;
            Ok(v.map(|v| v.to_string()).unwrap_or("none".into()))
        }
        Some("members") => Ok(members(node)),
        Some("wait-members") => {
            let (v, l) = (num(1)? as usize, num(2)? as usize);
            wait_until(node, "members", |n| {
                let h = n.health();
                h.leader.is_some() && h.members.len() == v && h.learners.len() == l
            })
            .await?;
            Ok(members(node))
        }
        Some("wait-stock") => {
            let (s, n) = (sku(1)?, num(2)? as u32);
            wait_until(node, "stock", |node| local_stock(node, &s) == Some(n)).await?;
            Ok(n.to_string())
        }
        Some("wait-gone") => {
            let id = num(1)?;
            wait_until(node, "removal", |n| {
                let h = n.health();
                !h.members.contains(&id) && !h.learners.contains(&id)
            })
            .await?;
            Ok(members(node))
        }
        Some("leave") => {
            node.leave().await.map_err(e)?;
            Ok("left".into())
        }
        _ => Err(format!("unknown command {line:?}")),
    }
}

// ---------- the launcher ----------

struct Proc {
    id: u64,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    async fn start(
        id: u64,
        url: &str,
        cluster: &str,
        dir: &std::path::Path,
    ) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--node")
            .arg(id.to_string())
            .arg("--url")
            .arg(url)
            .arg("--cluster")
            .arg(cluster)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn node {id}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut p = Proc {
            id,
            child,
            stdin,
            stdout,
        };
        let first = p.line().await?;
        if !first.starts_with("ready") {
            return Err(format!("node {id}: {first}"));
        }
        Ok(p)
    }

    async fn line(&mut self) -> Result<String, String> {
        match tokio::time::timeout(WAIT + Duration::from_secs(5), self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(_) => Err(format!("node {} exited", self.id)),
            Err(_) => Err(format!("node {} did not answer", self.id)),
        }
    }

    /// Sends a command; returns what follows `ok`, or the error.
    async fn call(&mut self, cmd: &str) -> Result<String, String> {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| format!("node {}: {e}", self.id))?;
        self.stdin.flush().await.map_err(|e| e.to_string())?;
        let l = self.line().await?;
        l.strip_prefix("ok ")
            .map(str::to_string)
            .ok_or(format!("node {} `{cmd}`: {l}", self.id))
    }

    async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }
}

fn leader_in(members: &str) -> Option<u64> {
    members
        .split_whitespace()
        .find_map(|f| f.strip_prefix("leader="))
        .and_then(|l| l.parse().ok())
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        println!("  ✓ {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

async fn launch(backend: &str, url: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let cluster = format!("demo-{}-{nanos}", std::process::id());
    println!("cluster `{cluster}` discovered through {backend} at {url}");

    println!("starting nodes 1, 2, 3 as separate processes, all at once");
    let t0 = Instant::now();
    let starts = (1..=3).map(|id| Proc::start(id, url, &cluster, dir.path()));
    let mut procs: BTreeMap<u64, Proc> = BTreeMap::new();
    for p in futures::future::join_all(starts).await {
        let p = p?;
        procs.insert(p.id, p);
    }
    let mut m = String::new();
    for p in procs.values_mut() {
        m = p.call("wait-members 3 0").await?;
    }
    let bootstrap_ms = t0.elapsed().as_millis();
    println!("  formed in {bootstrap_ms} ms: {m}");
    let leader = leader_in(&m).ok_or("no leader")?;

    let follower = *procs.keys().find(|i| **i != leader).ok_or("no follower")?;
    println!("writing through follower node {follower} (leader is node {leader})");
    let p = procs.get_mut(&follower).ok_or("follower")?;
    p.call("restock apple 10").await?;
    let v = p.call("stock! apple").await?;
    check(v == "10", "a write through a follower is applied")?;

    let victim = *procs
        .keys()
        .find(|i| **i != leader && **i != follower)
        .ok_or("no victim")?;
    println!("kill -9 node {victim}");
    procs.remove(&victim).ok_or("victim")?.kill9().await;
    let p = procs.get_mut(&follower).ok_or("follower")?;
    let v = p.call("restock apple 5").await?;
    check(v == "15", "the cluster goes on writing with a voter killed")?;

    println!("starting node 4 against the running cluster");
    let t4 = Instant::now();
    let mut p4 = Proc::start(4, url, &cluster, dir.path()).await?;
    p4.call("wait-stock apple 15").await?;
    let join_read_ms = t4.elapsed().as_millis();
    let m4 = p4.call("wait-members 3 1").await?;
    println!("  node 4 reads the latest write locally {join_read_ms} ms after its start: {m4}");
    check(m4.contains("learners=[4]"), "node 4 joins as a learner")?;
    procs.insert(4, p4);

    let leaving = follower;
    let observer = leader;
    println!("node {leaving} leaves");
    let tl = Instant::now();
    procs
        .get_mut(&leaving)
        .ok_or("leaving")?
        .call("leave")
        .await?;
    let mo = procs
        .get_mut(&observer)
        .ok_or("observer")?
        .call(&format!("wait-gone {leaving}"))
        .await?;
    let leave_ms = tl.elapsed().as_millis();
    println!("  removed from the membership in {leave_ms} ms: {mo}");
    if let Some(mut p) = procs.remove(&leaving) {
        let _ = p.child.wait().await;
    }
    let mo = procs
        .get_mut(&observer)
        .ok_or("observer")?
        .call("wait-members 3 0")
        .await?;
    let voters = mo.split(" learners=").next().unwrap_or_default();
    check(
        voters.contains('4') && mo.contains("learners=[]"),
        "node 4 was promoted to voter in its place",
    )?;
    let v = procs
        .get_mut(&4)
        .ok_or("node 4")?
        .call("restock apple 1")
        .await?;
    let mut same = true;
    for p in procs.values_mut() {
        same &= p.call("stock! apple").await? == "16";
    }
    check(
        v == "16" && same,
        "every live node reads every acknowledged write",
    )?;
    for (_, p) in procs {
        p.kill9().await;
    }
    let _ = cleanup(backend, url, &cluster).await;
    Ok(format!(
        "demo ok: backend={backend} bootstrap_ms={bootstrap_ms} join_read_ms={join_read_ms} \
         leave_ms={leave_ms} killed={victim} left={leaving} promoted=4 writes=3 lost=0"
    ))
}

/// Removes the demo cluster's records and entries from the store.
async fn cleanup(backend: &str, url: &str, cluster: &str) -> Result<(), String> {
    if backend == "redis" {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("catga:{{{cluster}}}*"))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        for k in keys {
            let _: Result<(), _> = redis::cmd("DEL").arg(k).query_async(&mut conn).await;
        }
    } else {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        for bucket in ["catga_discovery_records", "catga_discovery"] {
            let Ok(kv) = js.get_key_value(bucket).await else {
                continue;
            };
            let Ok(mut keys) = kv.keys().await else {
                continue;
            };
            let mut mine = Vec::new();
            while let Some(Ok(k)) = futures::StreamExt::next(&mut keys).await {
                if k.starts_with(&format!("{cluster}.")) {
                    mine.push(k);
                }
            }
            for k in mine {
                let _ = kv.purge(k).await;
            }
        }
    }
    Ok(())
}
