//! Failover under load: how long writes stop when the leader is killed with
//! `kill -9`, and whether a healthy cluster under load ever elects.
//!
//! `cargo run --release --example failover -- [--kills 50] [--clients 8] [--healthy-ms 1000] [--keep]`
//!
//! Three node processes (this program with `--node`, default catga
//! timeouts: heartbeat 50 ms, election 150–300 ms), each serving HTTP on its
//! own port, with data dirs in a temp dir. `--clients` tasks write without
//! pause: each POSTs `/restock` (its own SKU, +1) to any live node, with an
//! `Idempotency-Key` per write, and retries a failed write with the same key
//! on the next node until it is acknowledged. Then, `--kills` times: find
//! the leader (`/health`), SIGKILL it, wait for the first write that was
//! sent after the kill and acknowledged, restart the killed node on its data
//! dir and ports, wait until every node is `/ready`, and let the load run
//! healthy for `--healthy-ms` before the next kill.
//!
//! Output, one line per kill:
//!
//! ```text
//! kill 7: leader=2 term=9->10 resume_ms=312 ready_ms=1450 healthy_elections=0 writes_per_s=2000 at=15:07:43.512
//! ```
//!
//! - `resume_ms`: **writes-resume time**, from the SIGKILL to the first write
//!   acknowledged (by any client) among those sent after it;
//! - `term=a->b`: the highest term before the kill and once every node is
//!   ready again (b = a + 1 is one election; more is a split vote or a
//!   disruption by the restarted node);
//! - `ready_ms`: from the kill until the restarted node, and every other,
//!   answers `/ready` 200;
//! - `healthy_elections`: term changes in the healthy period that follows
//!   (all nodes up, no kill in progress), seen as the highest term over every
//!   node's `/health` at its start and end. When one happens, the nodes'
//!   election log lines of that period are printed;
//! - `writes_per_s`: acknowledged writes per second in that healthy period;
//! - `at`: the kill's time of day, UTC, as the nodes' logs print it.
//!
//! Then the sorted resume times, and a summary line:
//!
//! ```text
//! failover: kills=50 resume_p50_ms= resume_p90_ms= resume_p99_ms= resume_max_ms= healthy_elections= writes_acked= lost=0 duplicated=0 ...
//! ```
//!
//! Besides: `extra_elections` (terms beyond one per kill, summed),
//! `bad_answers`, `unresolved` (a client's last write never acknowledged
//! once the load stopped), `retries` (failed attempts, by cause on the line
//! before) and `healthy_writes_per_s_p50` (the median healthy period).
//!
//! `lost` and `duplicated` come from the final check: once the load stops,
//! every client's SKU, read on every node, must equal its count of
//! acknowledged writes (a restock answers the new total, so each
//! acknowledgement is checked too: `bad_answers`). The program exits
//! non-zero if that check fails, if a node never becomes ready, or if writes
//! do not resume within a minute of a kill. `healthy_elections` is a figure
//! (target 0), not a check. The machine's load average is printed with the
//! command line: the figures are only comparable under a similar load.
//!
//! The nodes log to `node-N.log` in the temp dir (`RUST_LOG` for them
//! defaults to `warn,openraft=info`); `--keep` keeps that dir and prints it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::http::Http;
use catga_examples::static_node::{NodeArgs, free_addr, parse_node};
use catga_examples::{GetStock, Restock};
use serde_json::Value;

/// How long a (re)started node may take to answer `/ready` 200.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long writes may take to resume after a kill before the run fails.
const RESUME_WAIT: Duration = Duration::from_secs(60);
/// How long a client keeps retrying its last write once the load stops.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// One HTTP request's limit on the client side (the nodes' own request
/// timeout is 5 s: a write answers by then, acknowledged or not).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed attempt, before the next node is tried.
/// The pause after a failed try grows from this (doubling) ...
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// ... up to this, and starts again after a success: short enough not to
/// blur the resume time much, long enough not to spin on a dead cluster.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(32);

// ---------- one node ----------

/// One node with its HTTP door, default timeouts, until killed.
async fn run_node(a: NodeArgs) -> Result<(), String> {
    let node = catga::cluster()
        .node_id(a.id)
        .listen(a.raft)
        .peers(a.peers)
        .data_dir(a.data_dir)
        .secret("failover-bench-secret")
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let http = Http::new(node.clone());
    let app = http
        .routes()
        .route("/restock", catga::http::command::<Restock>())
        .route("/stock", catga::http::query::<GetStock>())
        .with_state(http);
    let listener = tokio::net::TcpListener::bind(&a.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", a.http))?;
    catga::http::serve(listener, app)
        .await
        .map_err(|e| e.to_string())
}

// ---------- the three node processes ----------

/// The node processes, by id (1..=3); a killed node's slot is `None`.
struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    raft: Vec<String>,
    http: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn new(dir: &Path) -> Result<Cluster, String> {
        Ok(Cluster {
            exe: std::env::current_exe().map_err(|e| format!("where am I: {e}"))?,
            dir: dir.to_path_buf(),
            raft: (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?,
            http: (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?,
            children: (0..3).map(|_| None).collect(),
        })
    }

    fn ids(&self) -> impl Iterator<Item = u64> {
        1..=3
    }

    fn url(&self, id: u64) -> String {
        format!("http://{}", self.http[id as usize - 1])
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` on its data dir and ports; its output is appended
    /// to its log file.
    fn spawn(&mut self, id: u64) -> Result<(), String> {
        let i = id as usize - 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(|e| format!("node {id}'s log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--node")
            .arg(id.to_string())
            .arg("--http")
            .arg(&self.http[i])
            .arg("--raft")
            .arg(&self.raft[i])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")));
        for (j, r) in self.raft.iter().enumerate() {
            if j != i {
                cmd.arg("--peer").arg(format!("{}={r}", j + 1));
            }
        }
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,openraft=info".into());
        let child = cmd
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it.
    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Fails if node `id`'s process has exited (with the end of its log).
    fn check_alive(&mut self, id: u64) -> Result<(), String> {
        let exited = match self.children[id as usize - 1].as_mut() {
            Some(c) => c.try_wait().map_err(|e| e.to_string())?,
            None => return Err(format!("node {id} is not running")),
        };
        match exited {
            None => Ok(()),
            Some(status) => Err(format!(
                "node {id} exited ({status}); the end of its log:\n{}",
                self.log_tail(id, 2000)
            )),
        }
    }

    fn log_tail(&self, id: u64, bytes: u64) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = std::fs::File::open(self.log_path(id))?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(s)
        };
        read().unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn log_len(&self, id: u64) -> u64 {
        std::fs::metadata(self.log_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Node `id`'s log lines after byte `from` that speak of elections.
    fn election_lines(&self, id: u64, from: u64) -> Vec<String> {
        let read = || -> std::io::Result<String> {
            let mut f = std::fs::File::open(self.log_path(id))?;
            f.seek(SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                ["election", "pre-vote", "vote is changing", "leader"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(|l| format!("  node {id}: {l}"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `/health` says, the fields this benchmark reads.
struct Health {
    role: String,
    term: u64,
}

async fn health(client: &reqwest::Client, base: &str) -> Option<Health> {
    let r = client.get(format!("{base}/health")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    Some(Health {
        role: v["role"].as_str()?.to_string(),
        term: v["term"].as_u64()?,
    })
}

/// The highest term any running node reports (0 if none answers).
async fn max_term(client: &reqwest::Client, cluster: &Cluster) -> u64 {
    let mut term = 0;
    for id in cluster.ids() {
        if cluster.children[id as usize - 1].is_some()
            && let Some(h) = health(client, &cluster.url(id)).await
        {
            term = term.max(h.term);
        }
    }
    term
}

/// The node that says it is the leader, in the highest term, and that term.
async fn find_leader(client: &reqwest::Client, cluster: &Cluster) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let mut best: Option<(u64, u64)> = None;
        for id in cluster.ids() {
            if let Some(h) = health(client, &cluster.url(id)).await
                && h.role == "Leader"
                && best.is_none_or(|(_, t)| h.term > t)
            {
                best = Some((id, h.term));
            }
        }
        if let Some(b) = best {
            return Ok(b);
        }
        if Instant::now() > deadline {
            return Err(format!("no node said it leads within {READY_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node `id` answers `/ready` 200.
async fn wait_ready(
    client: &reqwest::Client,
    cluster: &mut Cluster,
    id: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_WAIT;
    let url = format!("{}/ready", cluster.url(id));
    loop {
        cluster.check_alive(id)?;
        let last = match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                v["not_ready"].as_str().unwrap_or("503").to_string()
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "node {id} was not ready within {READY_WAIT:?} (last: {last}); the end of its log:\n{}",
                cluster.log_tail(id, 2000)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------- the load ----------

/// The kill in progress, if any, and the first acknowledgement after it.
#[derive(Default)]
struct KillWatch {
    killed_at: Option<Instant>,
    resumed_at: Option<Instant>,
}

struct Load {
    urls: Vec<String>,
    stop: AtomicBool,
    acked: AtomicU64,
    kill: Mutex<KillWatch>,
    /// Woken when a write acknowledged after a kill is seen.
    resumed: tokio::sync::Notify,
}

impl Load {
    fn watch(&self) -> std::sync::MutexGuard<'_, KillWatch> {
        // a panicking client cannot leave the watch half-written: two fields
        self.kill.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write sent at `sent` was acknowledged at `at`.
    fn acked(&self, sent: Instant, at: Instant) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        let mut w = self.watch();
        if let Some(killed) = w.killed_at
            && sent >= killed
            && w.resumed_at.is_none_or(|r| at < r)
        {
            w.resumed_at = Some(at);
            drop(w);
            self.resumed.notify_waiters();
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    /// Writes acknowledged (200): its SKU must read this on every node.
    acked: u64,
    /// Acknowledgements whose answer (the SKU's new total) was not the
    /// client's count: a write applied twice, or one lost.
    bad_answers: u64,
    /// 1 if its last write was never acknowledged once the load stopped
    /// (it may or may not be applied).
    unresolved: u64,
    /// Failed attempts, retried with the same key, by why they failed.
    retries: BTreeMap<String, u64>,
    /// The last failure, in full.
    last_error: Option<String>,
}

/// One client: a write at a time, each with its own key, retried with that
/// key on the next node until it is acknowledged.
async fn client(load: Arc<Load>, c: usize) -> Result<ClientReport, String> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({"sku": sku(c), "qty": 1}).to_string();
    let mut report = ClientReport::default();
    let mut target = c % load.urls.len();
    let mut stopping: Option<Instant> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let key = format!("failover-{c}-{}", report.acked + 1);
        let mut pause = RETRY_PAUSE;
        loop {
            let sent = Instant::now();
            let answer = post(&http, &load.urls[target], &key, &body).await;
            match answer {
                Ok(total) => {
                    load.acked(sent, Instant::now());
                    report.acked += 1;
                    if total != report.acked {
                        report.bad_answers += 1;
                    }
                    break;
                }
                Err(Attempt::Refused(e)) => {
                    return Err(format!("client {c}: write {key} refused: {e}"));
                }
                Err(Attempt::Failed { why, detail }) => {
                    *report.retries.entry(why).or_default() += 1;
                    report.last_error = Some(detail);
                    target = (target + 1) % load.urls.len();
                    if load.stop.load(Ordering::Relaxed) {
                        let since = *stopping.get_or_insert_with(Instant::now);
                        if since.elapsed() > DRAIN_WAIT {
                            report.unresolved = 1;
                            return Ok(report);
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
            }
        }
    }
    Ok(report)
}

fn sku(c: usize) -> String {
    format!("failover-client-{c}")
}

enum Attempt {
    /// The node refused the request itself (a 4xx other than 409): a bug
    /// in this program, retrying cannot help.
    Refused(String),
    /// No answer, or one that leaves the outcome open: retry, same key.
    /// `why` is short (a status, `connect`, `timeout`, `other`).
    Failed { why: String, detail: String },
}

fn failed(e: reqwest::Error) -> Attempt {
    let why = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "other"
    };
    Attempt::Failed {
        why: why.into(),
        detail: e.to_string(),
    }
}

/// POSTs one restock; the new total on a 200.
async fn post(http: &reqwest::Client, base: &str, key: &str, body: &str) -> Result<u64, Attempt> {
    let r = http
        .post(format!("{base}/restock"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .map_err(failed)?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(failed)?;
    match status {
        200 => serde_json::from_str::<u64>(&text).map_err(|e| {
            Attempt::Refused(format!("a 200 whose body is not a total ({e}): {text}"))
        }),
        400..=499 if status != 409 => Err(Attempt::Refused(format!("{status} {text}"))),
        _ => Err(Attempt::Failed {
            why: status.to_string(),
            detail: format!("{status} {text}"),
        }),
    }
}

// ---------- the run ----------

struct Options {
    kills: usize,
    clients: usize,
    healthy: Duration,
    keep: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        kills: 50,
        clients: 8,
        healthy: Duration::from_millis(1000),
        keep: false,
    };
    while let Some(a) = args.next() {
        let mut number = |flag: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or(format!("{flag} takes a positive number"))
        };
        match a.as_str() {
            "--kills" => o.kills = number("--kills")? as usize,
            "--clients" => o.clients = number("--clients")? as usize,
            "--healthy-ms" => o.healthy = Duration::from_millis(number("--healthy-ms")?),
            "--keep" => o.keep = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// The wall-clock time of day, UTC, as the nodes' logs print it
/// (`HH:MM:SS.mmm`): to find a kill in them.
fn utc_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (s, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, s / 60 % 60, s % 60)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The `p` quantile by nearest rank (`sorted` ascending, not empty).
fn quantile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Term changes in one healthy period: the highest term at its start and
/// its end, and (when they differ) the nodes' election log lines of it.
async fn healthy_period(
    http: &reqwest::Client,
    cluster: &Cluster,
    load: &Load,
    length: Duration,
) -> (u64, f64, Vec<String>) {
    let offsets: Vec<u64> = cluster.ids().map(|id| cluster.log_len(id)).collect();
    let before = max_term(http, cluster).await;
    let (acked, started) = (load.acked.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(length).await;
    let rate =
        (load.acked.load(Ordering::Relaxed) - acked) as f64 / started.elapsed().as_secs_f64();
    let after = max_term(http, cluster).await;
    let elections = after.saturating_sub(before);
    let mut lines = Vec::new();
    if elections > 0 {
        lines.push(format!("  term {before} -> {after} in a healthy period"));
        for id in cluster.ids() {
            lines.extend(cluster.election_lines(id, offsets[id as usize - 1]));
        }
    }
    (elections, rate, lines)
}

async fn run(o: Options) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let mut cluster = Cluster::new(dir.path())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    for id in 1..=3 {
        cluster.spawn(id)?;
    }
    for id in 1..=3 {
        wait_ready(&http, &mut cluster, id).await?;
    }
    let load = Arc::new(Load {
        urls: cluster.ids().map(|id| cluster.url(id)).collect(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        kill: Mutex::new(KillWatch::default()),
        resumed: tokio::sync::Notify::new(),
    });
    let clients: Vec<_> = (0..o.clients)
        .map(|c| tokio::spawn(client(load.clone(), c)))
        .collect();

    let mut healthy_elections = 0;
    let mut extra_elections = 0;
    let mut rates = Vec::new();
    let mut resumes = Vec::new();
    let (e, rate, lines) = healthy_period(&http, &cluster, &load, o.healthy).await;
    healthy_elections += e;
    rates.push(rate);
    println!("warm-up: healthy_elections={e} writes_per_s={rate:.0}");
    for l in lines {
        println!("{l}");
    }
    let outcome: Result<(), String> = async {
        for k in 1..=o.kills {
            let (leader, term) = find_leader(&http, &cluster).await?;
            let killed_at = Instant::now();
            let wall = utc_time();
            *load.watch() = KillWatch {
                killed_at: Some(killed_at),
                resumed_at: None,
            };
            cluster.kill(leader);
            let resumed_at = loop {
                // registered before the check, so a wake in between is kept
                let resumed = load.resumed.notified();
                tokio::pin!(resumed);
                resumed.as_mut().enable();
                if let Some(at) = load.watch().resumed_at {
                    break at;
                }
                let left = RESUME_WAIT.saturating_sub(killed_at.elapsed());
                if tokio::time::timeout(left, resumed).await.is_err() {
                    return Err(format!(
                        "kill {k}: writes did not resume within {RESUME_WAIT:?} after node {leader} (the leader) was killed"
                    ));
                }
            };
            let resume_ms = resumed_at.duration_since(killed_at).as_secs_f64() * 1e3;
            resumes.push(resume_ms);
            cluster.spawn(leader)?;
            for id in 1..=3 {
                wait_ready(&http, &mut cluster, id).await?;
            }
            let ready_ms = killed_at.elapsed().as_millis();
            let new_term = max_term(&http, &cluster).await;
            if new_term > term + 1 {
                extra_elections += new_term - term - 1;
            }
            *load.watch() = KillWatch::default();
            let (e, rate, lines) = healthy_period(&http, &cluster, &load, o.healthy).await;
            healthy_elections += e;
            rates.push(rate);
            println!(
                "kill {k}: leader={leader} term={term}->{new_term} resume_ms={resume_ms:.0} ready_ms={ready_ms} healthy_elections={e} writes_per_s={rate:.0} at={wall}"
            );
            for l in lines {
                println!("{l}");
            }
        }
        Ok(())
    }
    .await;

    // a broken cluster: no drain, the nodes go with `cluster`
    outcome?;
    // stop the load: every client's last write is acknowledged first
    load.stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for (c, t) in clients.into_iter().enumerate() {
        reports.push(t.await.map_err(|e| format!("client {c} panicked: {e}"))??);
    }

    // every acknowledged write once, on every node
    let (lost, duplicated) = final_check(&http, &cluster, &reports).await?;
    let acked: u64 = reports.iter().map(|r| r.acked).sum();
    let bad_answers: u64 = reports.iter().map(|r| r.bad_answers).sum();
    let unresolved: u64 = reports.iter().map(|r| r.unresolved).sum();
    let mut why: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &reports {
        for (k, n) in &r.retries {
            *why.entry(k.as_str()).or_default() += n;
        }
        if r.unresolved > 0 {
            println!(
                "a write never acknowledged; its last error: {:?}",
                r.last_error
            );
        }
    }
    let retries: u64 = why.values().sum();
    println!(
        "retries by cause: {}",
        why.iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut sorted: Vec<u64> = resumes.iter().map(|ms| ms.round() as u64).collect();
    sorted.sort_unstable();
    if !sorted.is_empty() {
        println!(
            "resume_ms sorted: {}",
            sorted
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    rates.sort_by(f64::total_cmp);
    let q = |p| {
        if sorted.is_empty() {
            0
        } else {
            quantile(&sorted, p)
        }
    };
    let line = format!(
        "failover: kills={} resume_p50_ms={} resume_p90_ms={} resume_p99_ms={} resume_max_ms={} healthy_elections={healthy_elections} extra_elections={extra_elections} writes_acked={acked} lost={lost} duplicated={duplicated} bad_answers={bad_answers} unresolved={unresolved} retries={retries} clients={} healthy_writes_per_s_p50={:.0}",
        resumes.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        sorted.last().copied().unwrap_or(0),
        o.clients,
        rates.get(rates.len() / 2).copied().unwrap_or(0.0),
    );
    if o.keep {
        let kept = dir.keep();
        println!("data and logs kept in {}", kept.display());
    }
    if lost + duplicated + bad_answers + unresolved > 0 {
        return Err(format!("{line}\nthe final check failed"));
    }
    Ok(line)
}

/// Reads every client's SKU on every node until it equals the client's
/// acknowledged count (a node may still be applying); returns the writes
/// lost and duplicated (the worst node).
async fn final_check(
    http: &reqwest::Client,
    cluster: &Cluster,
    reports: &[ClientReport],
) -> Result<(u64, u64), String> {
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for id in cluster.ids() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = BTreeMap::new();
            for c in 0..reports.len() {
                let url = format!("{}/stock?sku={}", cluster.url(id), sku(c));
                let r = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("reading {url}: {e}"))?;
                let v: Value = r.json().await.map_err(|e| format!("reading {url}: {e}"))?;
                // `null` for a SKU never restocked
                seen.insert(c, v.as_u64().unwrap_or(0));
            }
            let (mut l, mut d) = (0, 0);
            for (c, r) in reports.iter().enumerate() {
                let v = seen.get(&c).copied().unwrap_or(0);
                l += r.acked.saturating_sub(v);
                d += v.saturating_sub(r.acked + r.unresolved);
            }
            if (l == 0 && d == 0) || Instant::now() > deadline {
                if l + d > 0 {
                    println!(
                        "node {id}: lost={l} duplicated={d} (client: node's value / acknowledged)"
                    );
                    for (c, r) in reports.iter().enumerate() {
                        println!(
                            "  client {c}: {} / {}",
                            seen.get(&c).copied().unwrap_or(0),
                            r.acked
                        );
                    }
                }
                lost = lost.max(l);
                duplicated = duplicated.max(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((lost, duplicated))
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--node") {
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
                    "usage: failover --node N --http ADDR --raft ADDR --peer ID=ADDR... --data-dir DIR: {e}"
                );
                ExitCode::from(2)
            }
        };
    }
    let options = match parse_options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("usage: failover [--kills K] [--clients N] [--healthy-ms MS] [--keep]: {e}");
            return ExitCode::from(2);
        }
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "failover: cargo run --release --example failover -- {} (3 nodes, default timeouts; load average {})",
        command.join(" "),
        loadavg()
    );
    let result = rt.block_on(run(options));
    println!("load average at the end: {}", loadavg());
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("failover FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
