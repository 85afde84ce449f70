//! The driver of the node-process binaries (`src/bin/catga-test-node.rs`,
//! the "current version", and `src/bin/catga-test-node-v2.rs`, a "newer
//! version" with more messages, for rolling-upgrade tests):
//!
//! `BIN --id N --listen ADDR --data-dir DIR [--peer ID=ADDR]... [--join]
//! [--snapshot-every N] [--keep-logs N]` starts the node with the shop of
//! `catga_tests`, prints `ready <addr>` once it runs, then answers one line
//! per command read on stdin (see [`crate::process`]):
//!
//! - `restock SKU QTY` → `ok <left>` (a replicated write)
//! - `order SKU QTY` → `ok <id>` or `err <handler error>`
//! - `stock SKU` → `ok <n or none>` (a local read)
//! - `stock! SKU` → the same, linearizable
//! - `health` → `ok <role> <term> <leader> <applied> <ready>`
//! - `stalled` → `ok <why this node cannot apply, or none>`
//! - `fingerprint` → `ok <applied> <hex digest of the replicated state>`
//! - `snapshot` → `ok` once this node took a snapshot (and purged its log)
//! - `deep KIB` → `ok <n>`: a command whose handler recurses through about
//!   KIB KiB of stack
//! - anything the binary's `extra` hook answers (both binaries: `abort`,
//!   the command `tests.Abort`, whose handler the current version has abort
//!   the process and v2 has fixed)
//! - `quit` → shuts down gracefully and exits 0
//!
//! A failed call prints `fail <error>`. Nothing else is printed on stdout
//! (logs go to stderr).

use std::future::Future;
use std::pin::Pin;

use catga::prelude::*;

use crate::Shop;

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

use std::time::Duration;

use catga::{Consistency, Node};

use crate::{GetStock, PlaceOrder, Restock};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Args {
    id: u64,
    listen: String,
    data_dir: String,
    peers: Vec<(u64, String)>,
    join: bool,
    snapshot_every: u64,
    keep_logs: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        id: 0,
        listen: String::new(),
        data_dir: String::new(),
        peers: Vec::new(),
        join: false,
        snapshot_every: 10_000,
        keep_logs: 1_000,
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
            "--keep-logs" => {
                a.keep_logs = value()?.parse().map_err(|e| format!("--keep-logs: {e}"))?
            }
            "--peer" => {
                let v = value()?;
                let (id, addr) = v.split_once('=').ok_or("--peer ID=ADDR")?;
                a.peers
                    .push((id.parse().map_err(|e| format!("--peer: {e}"))?, addr.into()));
            }
            "--join" => a.join = true,
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

async fn answer(node: &Node, line: &str, extra: Extra) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if let Some(fut) = extra(node.clone(), words.iter().map(|w| w.to_string()).collect()) {
        return fut.await;
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
        Some("stalled") => Ok(format!(
            "ok {}",
            node.health().stalled.unwrap_or_else(|| "none".into())
        )),
        Some("snapshot") => {
            node.snapshot().await.map_err(e)?;
            Ok("ok".into())
        }
        Some("deep") => {
            let kib = qty(1)?;
            let n = node.send(Deep { kib }).await.map_err(e)?;
            Ok(format!("ok {n}"))
        }
        Some("fingerprint") => {
            let (applied, bytes) = catga::testing::state_fingerprint(node).map_err(e)?;
            Ok(format!("ok {applied} {}", digest(&bytes)))
        }
        Some(other) => Err(format!("unknown command {other}")),
        None => Err("empty line".into()),
    }
}

/// Runs a node process until `quit` or the end of stdin.
pub async fn run(extra: Extra) {
    // logs to stderr: stdout carries the protocol (a test writer would print there)
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("catga-test-node: {e}");
            std::process::exit(2);
        }
    };
    let mut b = catga::cluster()
        .node_id(args.id)
        .listen(args.listen)
        .data_dir(args.data_dir)
        .secret("test-secret")
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(Duration::from_millis(300), Duration::from_millis(600))
        .snapshot_every(args.snapshot_every)
        .snapshot_logs_to_keep(args.keep_logs)
        .request_timeout(Duration::from_secs(10))
        .peers(args.peers);
    if args.join {
        b = b.join_existing();
    }
    let node = match b.start().await {
        Ok(n) => n,
        Err(e) => {
            println!("fail {e}");
            std::process::exit(1);
        }
    };
    println!("ready {}", node.local_addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (tag, cmd) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if cmd == "quit" {
            break;
        }
        let (tag, cmd) = (tag.to_string(), cmd.to_string());
        let node = node.clone();
        tokio::spawn(async move {
            let out = match answer(&node, &cmd, extra).await {
                Ok(s) => s,
                Err(e) => format!("fail {e}"),
            };
            println!("{tag} {out}");
        });
    }
    node.shutdown().await;
}
