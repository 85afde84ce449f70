//! The driver of the node-process binaries (`src/bin/catga-test-node.rs`,
//! the "current version", and `src/bin/catga-test-node-v2.rs`, a "newer
//! version" with more messages, for rolling-upgrade tests), for tests whose
//! fault happens to processes (`kill -9`, SIGSTOP/SIGCONT, an abort).
//!
//! `BIN --id N --listen ADDR --data-dir DIR [--peer ID=ADDR]...
//! [--join] [--snapshot-every N] [--election-ms MIN:MAX]` starts the node with the shop of
//! `catga_tests`, prints `ready <addr>` once it runs, then answers one
//! line per command read on stdin (see [`crate::process`]):
//!
//! - `restock SKU QTY` → `ok <left>` (a replicated write)
//! - `order SKU QTY` → `ok <id>` or `err <handler error>`
//! - `stock SKU` → `ok <n or none>` (a local read)
//! - `stock! SKU` → the same, linearizable
//! - `health` → `ok <role> <term> <leader> <applied> <ready>`
//! - `fingerprint` → `ok <applied> <hex digest of the replicated state>`
//! - `orders SKU N` → `ok <accepted>`: N orders sent at once (each
//!   publishes an `OrderPlaced` event)
//! - `hang` → `ok`: publishes a test-only event whose handler never returns
//!   (on every node)
//! - `first-ready` → `ok <role> <term> <leader> <applied>`: the health at the
//!   first moment this process reported `ready` (or `ok none` if never)
//! - `status` → `ok role=R term=T leader=L applied=A snapshot=S leader_commit=C
//!   events_delivered=D event_lag=N ready=B not_ready=<reason or none>`
//!   (`not_ready` last: its value has spaces)
//! - `quit` → shuts down gracefully and exits 0
//!
//! - `gate` → `ok`: publishes a test-only event whose handler waits while
//!   the gate of the node it runs on is closed
//! - `close-gate` / `open-gate` → `ok`: closes / opens this node's gate
//!   (a new process starts open)
//! - `changed MS` → `ok` once this node's view of the cluster changed, or
//!   after MS ms (at most 1,000)
//! - `wait-leader` → `ok <id>`: `Node::wait_for_leader`
//! - `seen` → `ok <n>`: `OrderPlaced` events handled in this process
//! - `snapshot` → `ok`: asks for a snapshot now (see `snapshot=` in `status`)
//! - `stalled` → `ok <why this node cannot apply, or none>`
//! - `deep KIB` → `ok <n>`: a command whose handler recurses through about
//!   KIB KiB of stack
//! - mediator (issue 13), the handlers answer with the id of the node that
//!   ran them:
//!   - `delay MS` → `ok`: this node's mediator test handlers take MS ms
//!   - `hold on|off` → `ok`: `Hold` queries hang on this node (or not)
//!   - `held N` → `ok`: once N `Hold` queries have started on this node
//!   - `sendto ID who|hold` → `ok <id> <ms>` or `err <Error::Debug-kind> <ms>`
//!   - `route ll|rr N` → `ok id=count,...`: N least_loaded / round_robin
//!     queries, 4 at a time
//!   - `route-key K...` → `ok <id> ...`: the node each key routed to
//!   - `hold-key K` → `ok <id>`: a key-routed `Hold` query
//!   - `broadcast` → `ok <id>:ok:<handlers> | <id>:err:<kind> ...`
//!   - `hellos` → `ok <n>`: broadcast `Hello` events handled here
//!   - `members` → `ok <id>:<role>:<liveness> ...`
//! - anything the binary's `extra` hook answers (both binaries: `abort`,
//!   the command `tests.Abort`, whose handler the current version has abort
//!   the process and v2 has fixed)
//!
//! More flags: `--event-deadline-ms N` (event handler deadline),
//! `--slow-event-ms N` (slow event handler threshold),
//! `--keep-logs N` (log entries kept behind a snapshot).
//!
//! A failed call prints `fail <error>`. Nothing else is printed on stdout
//! (logs go to stderr).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga::prelude::*;
use catga::{Consistency, Health, Node};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{GetStock, PlaceOrder, Restock, Shop};

/// A command whose handler uses about `kib` KiB of stack.
#[command(name = "tests.Deep")]
pub struct Deep {
    pub kib: u32,
}

#[inline(never)]
fn burn(n: u32) -> u64 {
    let buf = std::hint::black_box([n as u8; 1024]);
    let below = if n == 0 { 0 } else { burn(n - 1) };
    below + buf.iter().map(|b| *b as u64).sum::<u64>()
}

#[handler]
pub fn deep(cmd: Deep, shop: &mut Shop) -> u64 {
    let n = burn(cmd.kib);
    shop.stock.insert("deep".into(), cmd.kib);
    n
}

/// A binary's own stdin commands: `Some(answer)` for a line it handles.
pub type Extra =
    fn(Node, Vec<String>) -> Option<Pin<Box<dyn Future<Output = Result<String, String>> + Send>>>;

/// A test-only event whose handler never returns (a hung side effect).
#[event(name = "test_node.Stall")]
struct Stall {}

#[handler]
async fn stall_forever(_e: Stall) {
    std::future::pending::<()>().await
}

/// Whether `Gate` events may pass on this node (`close-gate`, `open-gate`).
static GATE_OPEN: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(true));

/// A test-only event whose handler waits while this node's gate is closed.
#[event(name = "test_node.Gate")]
struct Gate {}

#[handler]
async fn wait_at_gate(_e: Gate) {
    let _ = GATE_OPEN.subscribe().wait_for(|open| *open).await;
}

// ---- mediator test messages (issue 13) ------------------------------------

/// This process's node id (one node per process).
static NODE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How long this node's mediator test handlers take.
static DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Whether `Hold` queries hang on this node.
static HOLD: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));
/// `Hold` queries started on this node.
static HELD: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));
/// `Hello` broadcasts handled on this node.
static HELLOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn served() -> u64 {
    let ms = DELAY_MS.load(std::sync::atomic::Ordering::Relaxed);
    if ms > 0 {
        // simulated work (a slow handler), not synchronisation
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    NODE_ID.load(std::sync::atomic::Ordering::Relaxed)
}

async fn held() -> u64 {
    HELD.send_modify(|n| *n += 1);
    let _ = HOLD.subscribe().wait_for(|on| !*on).await;
    NODE_ID.load(std::sync::atomic::Ordering::Relaxed)
}

/// Which node answers (`send_to` picks it).
#[query(name = "test_node.Who")]
pub struct Who {}
#[handler]
async fn who(_q: Who) -> u64 {
    served().await
}

#[query(name = "test_node.WhoLeastLoaded", route = least_loaded)]
pub struct WhoLeastLoaded {}
#[handler]
async fn who_least_loaded(_q: WhoLeastLoaded) -> u64 {
    served().await
}

#[query(name = "test_node.WhoRoundRobin", route = round_robin)]
pub struct WhoRoundRobin {}
#[handler]
async fn who_round_robin(_q: WhoRoundRobin) -> u64 {
    served().await
}

#[query(name = "test_node.WhoKey", route = key(key))]
pub struct WhoKey {
    pub key: String,
}
#[handler]
async fn who_key(_q: WhoKey) -> u64 {
    served().await
}

/// Hangs while `hold on` on the node that runs it.
#[query(name = "test_node.Hold")]
pub struct Hold {}
#[handler]
async fn hold(_q: Hold) -> u64 {
    held().await
}

#[query(name = "test_node.HoldKey", route = key(key))]
pub struct HoldKey {
    pub key: String,
}
#[handler]
async fn hold_key(_q: HoldKey) -> u64 {
    held().await
}

#[event(name = "test_node.Hello")]
pub struct Hello {}
#[handler]
async fn hello(_e: Hello) {
    HELLOS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn error_kind(e: &catga::Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '(', '{']).next().unwrap_or("").to_string()
}

async fn mediator_command(node: &Node, words: &[&str]) -> Option<Result<String, String>> {
    let arg = |i: usize| -> Result<&str, String> {
        words
            .get(i)
            .copied()
            .ok_or_else(|| format!("missing argument {i}"))
    };
    let num = |i: usize| -> Result<u64, String> {
        arg(i)?
            .parse::<u64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    let r = match words.first().copied()? {
        "delay" => num(1).map(|ms| {
            DELAY_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
            "ok".to_string()
        }),
        "hold" => arg(1).map(|v| {
            HOLD.send_replace(v == "on");
            "ok".to_string()
        }),
        "held" => match num(1) {
            Ok(n) => {
                let mut rx = HELD.subscribe();
                match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|h| *h >= n)).await
                {
                    Ok(Ok(_)) => Ok("ok".to_string()),
                    _ => Err(format!("fewer than {n} held")),
                }
            }
            Err(e) => Err(e),
        },
        "sendto" => match (num(1), arg(2)) {
            (Ok(to), Ok(what)) => {
                let start = std::time::Instant::now();
                let r = match what {
                    "hold" => node.send_to(to, Hold {}).await,
                    _ => node.send_to(to, Who {}).await,
                };
                let ms = start.elapsed().as_millis();
                Ok(match r {
                    Ok(id) => format!("ok {id} {ms}"),
                    Err(e) => format!("err {} {ms} {e}", error_kind(&e)),
                })
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        "route" => match (arg(1), num(2)) {
            (Ok(how), Ok(n)) => {
                let mut count: std::collections::BTreeMap<u64, u64> = Default::default();
                let mut err = None;
                let ids: Vec<u64> = (0..n).collect();
                for chunk in ids.chunks(4) {
                    let calls = chunk.iter().map(|_| async {
                        if how == "ll" {
                            node.send(WhoLeastLoaded {}).await
                        } else {
                            node.send(WhoRoundRobin {}).await
                        }
                    });
                    for r in futures::future::join_all(calls).await {
                        match r {
                            Ok(id) => *count.entry(id).or_default() += 1,
                            Err(e) => err = Some(e.to_string()),
                        }
                    }
                }
                match err {
                    Some(e) => Err(e),
                    None => Ok(format!(
                        "ok {}",
                        count
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )),
                }
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        "route-key" => {
            let mut out = Vec::new();
            for k in &words[1..] {
                match node.send(WhoKey { key: k.to_string() }).await {
                    Ok(id) => out.push(id.to_string()),
                    Err(e) => return Some(Err(e.to_string())),
                }
            }
            Ok(format!("ok {}", out.join(" ")))
        }
        "hold-key" => match arg(1) {
            Ok(k) => node
                .send(HoldKey { key: k.to_string() })
                .await
                .map(|id| format!("ok {id}"))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
        "broadcast" => match node.broadcast(Hello {}).await {
            Ok(ds) => Ok(format!(
                "ok {}",
                ds.iter()
                    .map(|d| match &d.result {
                        Ok(n) => format!("{}:ok:{n}", d.node),
                        Err(e) => format!("{}:err:{}", d.node, error_kind(e)),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            Err(e) => Err(e.to_string()),
        },
        "hellos" => Ok(format!(
            "ok {}",
            HELLOS.load(std::sync::atomic::Ordering::SeqCst)
        )),
        "members" => Ok(format!(
            "ok {}",
            node.members()
                .iter()
                .map(|m| format!("{}:{:?}:{:?}", m.id, m.role, m.liveness).to_lowercase())
                .collect::<Vec<_>>()
                .join(" ")
        )),
        _ => return None,
    };
    Some(r)
}

/// The health at the first moment this process said `ready`.
type FirstReady = Arc<Mutex<Option<Health>>>;

struct Args {
    id: u64,
    listen: String,
    data_dir: String,
    peers: Vec<(u64, String)>,
    join: bool,
    snapshot_every: u64,
    election_ms: (u64, u64),
    event_deadline_ms: Option<u64>,
    slow_event_ms: Option<u64>,
    keep_logs: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        id: 0,
        listen: String::new(),
        data_dir: String::new(),
        peers: Vec::new(),
        join: false,
        snapshot_every: 10_000,
        election_ms: (300, 600),
        event_deadline_ms: None,
        slow_event_ms: None,
        keep_logs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => a.id = value()?.parse().map_err(|e| format!("--id: {e}"))?,
            "--listen" => a.listen = value()?,
            "--data-dir" => a.data_dir = value()?,
            "--snapshot-every" => {
                a.snapshot_every = value()?
                    .parse()
                    .map_err(|e| format!("--snapshot-every: {e}"))?
            }
            "--peer" => {
                let v = value()?;
                let (id, addr) = v.split_once('=').ok_or("--peer ID=ADDR")?;
                a.peers
                    .push((id.parse().map_err(|e| format!("--peer: {e}"))?, addr.into()));
            }
            "--join" => a.join = true,
            "--election-ms" => {
                let v = value()?;
                let (lo, hi) = v.split_once(':').ok_or("--election-ms MIN:MAX")?;
                a.election_ms = (
                    lo.parse().map_err(|e| format!("--election-ms: {e}"))?,
                    hi.parse().map_err(|e| format!("--election-ms: {e}"))?,
                );
            }
            "--keep-logs" => {
                a.keep_logs = Some(value()?.parse().map_err(|e| format!("--keep-logs: {e}"))?)
            }
            "--slow-event-ms" => {
                a.slow_event_ms = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--slow-event-ms: {e}"))?,
                )
            }
            "--event-deadline-ms" => {
                a.event_deadline_ms = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--event-deadline-ms: {e}"))?,
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn digest(bytes: &[u8]) -> String {
    // FNV-1a: enough to compare replicas in a test
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

async fn answer(
    node: &Node,
    first_ready: &FirstReady,
    line: &str,
    extra: Extra,
) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if let Some(fut) = extra(node.clone(), words.iter().map(|w| w.to_string()).collect()) {
        return fut.await;
    }
    if let Some(r) = mediator_command(node, &words).await {
        return r;
    }
    let qty = |i: usize| -> Result<u32, String> {
        words
            .get(i)
            .ok_or("missing quantity")?
            .parse()
            .map_err(|e| format!("quantity: {e}"))
    };
    let sku =
        |i: usize| -> Result<String, String> { Ok(words.get(i).ok_or("missing sku")?.to_string()) };
    let e = |e: catga::Error| e.to_string();
    match words.first().copied() {
        Some("restock") => {
            let left = node
                .send(Restock {
                    sku: sku(1)?,
                    qty: qty(2)?,
                })
                .await
                .map_err(e)?;
            Ok(format!("ok {left}"))
        }
        Some("order") => {
            let r = node
                .send(PlaceOrder {
                    sku: sku(1)?,
                    qty: qty(2)?,
                })
                .await
                .map_err(e)?;
            Ok(match r {
                Ok(id) => format!("ok {id}"),
                Err(err) => format!("err {err:?}"),
            })
        }
        Some(q @ ("stock" | "stock!")) => {
            let c = if q == "stock!" {
                Consistency::Linearizable
            } else {
                Consistency::Local
            };
            let n = node.query(GetStock { sku: sku(1)? }, c).await.map_err(e)?;
            Ok(match n {
                Some(n) => format!("ok {n}"),
                None => "ok none".into(),
            })
        }
        Some("health") => {
            let h = node.health();
            Ok(format!(
                "ok {:?} {} {} {} {}",
                h.role,
                h.term,
                h.leader.map(|l| l.to_string()).unwrap_or("none".into()),
                h.applied_index.unwrap_or(0),
                h.ready
            ))
        }
        Some("orders") => {
            let n: usize = words
                .get(2)
                .ok_or("missing count")?
                .parse()
                .map_err(|e| format!("count: {e}"))?;
            let sku = sku(1)?;
            let calls = (0..n).map(|_| {
                node.send(PlaceOrder {
                    sku: sku.clone(),
                    qty: 1,
                })
            });
            let mut accepted = 0;
            for r in futures::future::join_all(calls).await {
                if r.map_err(e)?.is_ok() {
                    accepted += 1;
                }
            }
            Ok(format!("ok {accepted}"))
        }
        Some("status") => {
            let h = node.health();
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("none".into());
            Ok(format!(
                "ok role={:?} term={} leader={} applied={} snapshot={} leader_commit={} events_delivered={} event_lag={} ready={} not_ready={}",
                h.role,
                h.term,
                opt(h.leader),
                opt(h.applied_index),
                opt(h.snapshot_index),
                opt(h.leader_commit_index),
                h.events_delivered_index,
                h.event_lag,
                h.ready,
                h.not_ready.as_deref().unwrap_or("none")
            ))
        }
        Some("gate") => {
            node.publish(Gate {}).await.map_err(e)?;
            Ok("ok".into())
        }
        Some("close-gate") => {
            GATE_OPEN.send_replace(false);
            Ok("ok".into())
        }
        Some("open-gate") => {
            GATE_OPEN.send_replace(true);
            Ok("ok".into())
        }
        Some("changed") => {
            // waits until this node's view of the cluster changes (or MS
            // pass): what the test-side `wait_*` helpers wait on
            let ms: u64 = words
                .get(1)
                .ok_or("missing ms")?
                .parse()
                .map_err(|e| format!("ms: {e}"))?;
            node.health_changed(Duration::from_millis(ms.min(1_000)))
                .await;
            Ok("ok".into())
        }
        Some("wait-leader") => {
            let l = node
                .wait_for_leader(Duration::from_secs(10))
                .await
                .map_err(e)?;
            Ok(format!("ok {l}"))
        }
        Some("seen") => Ok(format!(
            "ok {}",
            crate::ORDERS_SEEN.load(std::sync::atomic::Ordering::SeqCst)
        )),
        Some("snapshot") => {
            node.snapshot().await.map_err(e)?;
            Ok("ok".into())
        }
        Some("hang") => {
            node.publish(Stall {}).await.map_err(e)?;
            Ok("ok".into())
        }
        Some("first-ready") => Ok(match &*first_ready.lock().map_err(|e| e.to_string())? {
            Some(h) => format!(
                "ok {:?} {} {} {}",
                h.role,
                h.term,
                h.leader.map(|l| l.to_string()).unwrap_or("none".into()),
                h.applied_index.unwrap_or(0)
            ),
            None => "ok none".into(),
        }),
        Some("fingerprint") => {
            let (applied, bytes) = catga::testing::state_fingerprint(node).map_err(e)?;
            Ok(format!("ok {applied} {}", digest(&bytes)))
        }
        Some("stalled") => Ok(format!(
            "ok {}",
            node.health().stalled.unwrap_or_else(|| "none".into())
        )),
        Some("deep") => {
            let kib = qty(1)?;
            let n = node.send(Deep { kib }).await.map_err(e)?;
            Ok(format!("ok {n}"))
        }
        Some(other) => Err(format!("unknown command {other}")),
        None => Err("empty line".into()),
    }
}

/// Runs a node process until `quit` or the end of stdin.
pub async fn run(extra: Extra) {
    // logs go to stderr: stdout carries only the answers
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("catga-test-node: {e}");
            std::process::exit(2);
        }
    };
    NODE_ID.store(args.id, std::sync::atomic::Ordering::Relaxed);
    let mut b = catga::cluster()
        .node_id(args.id)
        .listen(args.listen)
        .data_dir(args.data_dir)
        .secret("test-secret")
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(
            Duration::from_millis(args.election_ms.0),
            Duration::from_millis(args.election_ms.1),
        )
        .snapshot_every(args.snapshot_every)
        .request_timeout(Duration::from_secs(10))
        .peers(args.peers);
    if args.join {
        b = b.join_existing();
    }
    if let Some(ms) = args.event_deadline_ms {
        b = b.event_handler_timeout(Duration::from_millis(ms));
    }
    if let Some(n) = args.keep_logs {
        b = b.snapshot_logs_to_keep(n);
    }
    if let Some(ms) = args.slow_event_ms {
        b = b.slow_event_handler(Duration::from_millis(ms));
    }
    let node = match b.start().await {
        Ok(n) => n,
        Err(e) => {
            println!("fail {e}");
            std::process::exit(1);
        }
    };
    // record the first moment this node says it is ready (a restarted
    // node must not say so before it has caught up with a live leader)
    let first_ready: FirstReady = Arc::default();
    {
        let (node, first) = (node.clone(), first_ready.clone());
        tokio::spawn(async move {
            loop {
                let h = node.health();
                if h.ready {
                    if let Ok(mut f) = first.lock() {
                        *f = Some(h);
                    }
                    return;
                }
                node.health_changed(Duration::from_millis(100)).await;
            }
        });
    }
    println!("ready {}", node.local_addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (tag, cmd) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if cmd == "quit" {
            break;
        }
        let (tag, cmd) = (tag.to_string(), cmd.to_string());
        let (node, first_ready) = (node.clone(), first_ready.clone());
        tokio::spawn(async move {
            let out = match answer(&node, &first_ready, &cmd, extra).await {
                Ok(s) => s,
                Err(e) => format!("fail {e}"),
            };
            println!("{tag} {out}");
        });
    }
    node.shutdown().await;
}
