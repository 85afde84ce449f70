//! Nodes as OS processes (`src/bin/catga-test-node.rs`), for faults that
//! happen to processes: `kill -9` ([`Proc::kill9`]), a stall
//! ([`Proc::stop`] / [`Proc::resume`], SIGSTOP/SIGCONT), a restart from the
//! same data dir.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, oneshot};

/// The node binary, which cargo builds beside the test binaries
/// (`target/<profile>/catga-test-node`, the tests in `target/<profile>/deps/`).
pub fn node_binary() -> PathBuf {
    binary("catga-test-node")
}

/// The "newer version" node binary (`src/bin/catga-test-node-v2.rs`), for
/// rolling-upgrade tests.
pub fn node_binary_v2() -> PathBuf {
    binary("catga-test-node-v2")
}

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A free address on 127.0.0.1 for a child process to listen on (see
/// [`free_port`]).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A port on 127.0.0.1 that nothing listens on, for a child process to
/// bind later. Not port 0's pick: a port from the kernel's ephemeral range
/// (`ip_local_port_range`, 32768-60999 here), once released, can be taken
/// as the source port of any outgoing connection before the child binds
/// it (seen: "cannot listen on 127.0.0.1:46579: Address already in use" in
/// a process test). So: a random port below that range, never handed out
/// twice by this process, and checked to be bindable now.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    /// The ports handed out, and a xorshift state (seeded per process, so
    /// two test binaries start at different places).
    static GIVEN: OnceLock<Mutex<(HashSet<u16>, u64)>> = OnceLock::new();
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    let mut guard = GIVEN
        .get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64);
            let seed = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
            Mutex::new((HashSet::new(), seed))
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (given, state) = &mut *guard;
    for _ in 0..10_000 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let port = LOW + (*state % u64::from(HIGH - LOW)) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {LOW}..{HIGH} on 127.0.0.1")
}

type Waiters = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<String>>>>;

/// A running node process.
pub struct Proc {
    pub id: u64,
    pub addr: String,
    child: Child,
    stdin: Mutex<ChildStdin>,
    waiters: Waiters,
    next: AtomicU64,
}

/// How to start one node process.
#[derive(Clone, Debug)]
pub struct Spec {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub peers: Vec<(u64, String)>,
    pub join: bool,
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    pub keep_logs: u64,
    /// Another binary (an "old version"), or the default node binary.
    pub binary: Option<PathBuf>,
    /// The election timeout range in ms (the binary's default: 300..600).
    pub election_ms: Option<(u64, u64)>,
    /// More flags for the node binary (e.g. `--event-deadline-ms 200`).
    pub args: Vec<String>,
    /// Append the process's stderr (its logs) to this file instead of the
    /// test's stderr.
    pub stderr: Option<PathBuf>,
}

impl Spec {
    /// Node `id` of a static cluster whose members are `addrs` (index i is
    /// node i+1), keeping its data in `dir/n<id>`.
    pub fn member(id: u64, addrs: &[String], dir: &Path) -> Spec {
        Spec {
            id,
            addr: addrs[id as usize - 1].clone(),
            data_dir: dir.join(format!("n{id}")),
            peers: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (i as u64 + 1, a.clone()))
                .filter(|(i, _)| *i != id)
                .collect(),
            join: false,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            binary: None,
            election_ms: None,
            args: Vec::new(),
            stderr: None,
        }
    }
}

impl Spec {
    /// Node `id` of a self-forming cluster: no peers, found through the
    /// discovery store at `url` (`redis://` or `nats://`) under
    /// `cluster_name`, with the given bootstrap expectation; data in
    /// `dir/n<id>`, a free port.
    pub fn discovered(id: u64, url: &str, cluster_name: &str, expect: usize, dir: &Path) -> Spec {
        Spec {
            id,
            addr: free_addr(),
            data_dir: dir.join(format!("n{id}")),
            peers: Vec::new(),
            join: false,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            binary: None,
            election_ms: None,
            args: vec![
                "--discovery".into(),
                url.into(),
                "--cluster-name".into(),
                cluster_name.into(),
                "--bootstrap-expect".into(),
                expect.to_string(),
            ],
            stderr: None,
        }
    }
}

/// The answer to `members`: voters, learners and leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
}

impl Members {
    /// Parses `voters=1,2 learners=3 leader=1 role=..`.
    pub fn parse(s: &str) -> Members {
        let st = Status(s.to_string());
        let ids = |k: &str| -> Vec<u64> {
            st.get(k)
                .split(',')
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        Members {
            voters: ids("voters"),
            learners: ids("learners"),
            leader: st.get("leader").parse().ok(),
        }
    }
}

impl Proc {
    /// Waits until `members` satisfies `pred`; returns it.
    pub async fn wait_members(
        &self,
        timeout: Duration,
        pred: impl Fn(&Members) -> bool,
    ) -> Result<Members, String> {
        self.wait_for("members", timeout, |s| pred(&Members::parse(s)))
            .await
            .map(|s| Members::parse(&s))
    }

    /// Starts the process and waits (up to 20 s) for it to print `ready`.
    pub async fn start(spec: &Spec) -> Result<Proc, String> {
        Proc::start_cmd(spec, None).await
    }

    /// [`Proc::start`] inside the network namespace `netns` (see
    /// [`crate::netns`]): `ip netns exec`, which execs the node binary, so
    /// signals reach the node itself.
    pub async fn start_in(spec: &Spec, netns: &str) -> Result<Proc, String> {
        Proc::start_cmd(spec, Some(netns)).await
    }

    async fn start_cmd(spec: &Spec, netns: Option<&str>) -> Result<Proc, String> {
        let binary = spec.binary.clone().unwrap_or_else(node_binary);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("--id")
            .arg(spec.id.to_string())
            .arg("--listen")
            .arg(&spec.addr)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--snapshot-every")
            .arg(spec.snapshot_every.to_string())
            .arg("--keep-logs")
            .arg(spec.keep_logs.to_string());
        for (id, a) in &spec.peers {
            cmd.arg("--peer").arg(format!("{id}={a}"));
        }
        if spec.join {
            cmd.arg("--join");
        }
        if let Some((lo, hi)) = spec.election_ms {
            cmd.arg("--election-ms").arg(format!("{lo}:{hi}"));
        }
        cmd.args(&spec.args);
        if crate::tls::enabled() && !spec.args.iter().any(|a| a == "--tls") {
            let parent = spec.data_dir.parent().unwrap_or(&spec.data_dir);
            cmd.arg("--tls")
                .arg(crate::tls::write_files(&parent.join("tls"), spec.id));
        }
        let stderr = match &spec.stderr {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            None => Stdio::inherit(),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), async {
            // stdout carries only protocol lines; skip anything else
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.starts_with("ready") || l.starts_with("fail") => {
                        return Ok(l);
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(format!("node {} exited before it was ready", spec.id)),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .map_err(|_| format!("node {} did not start within 20 s", spec.id))??;
        if !first.starts_with("ready") {
            return Err(format!("node {}: {first}", spec.id));
        }
        let waiters: Waiters = Default::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
                if let Ok(tag) = tag.parse::<u64>()
                    && let Some(tx) = w.lock().expect("waiters").remove(&tag)
                {
                    let _ = tx.send(rest.to_string());
                }
            }
            // the process is gone: every waiter's sender drops
            w.lock().expect("waiters").clear();
        });
        Ok(Proc {
            id: spec.id,
            addr: spec.addr.clone(),
            child,
            stdin: Mutex::new(stdin),
            waiters,
            next: AtomicU64::new(1),
        })
    }

    /// Sends one command line and waits for its answer (`ok ...`, `err ...`
    /// or `fail ...`), or `None` if the process died or `timeout` passed.
    pub async fn call(&self, cmd: &str, timeout: Duration) -> Option<String> {
        let tag = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(tag, tx);
        {
            let mut stdin = self.stdin.lock().await;
            if stdin
                .write_all(format!("{tag} {cmd}\n").as_bytes())
                .await
                .is_err()
            {
                return None;
            }
            let _ = stdin.flush().await;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.waiters.lock().expect("waiters").remove(&tag);
                None
            }
        }
    }

    /// `call`, expecting `ok VALUE`; returns VALUE.
    pub async fn ok(&self, cmd: &str) -> Result<String, String> {
        match self.call(cmd, Duration::from_secs(30)).await {
            Some(s) => match s.strip_prefix("ok") {
                Some(v) => Ok(v.trim().to_string()),
                None => Err(s),
            },
            None => Err(format!("node {}: no answer to `{cmd}`", self.id)),
        }
    }

    /// SIGKILL: the process dies at once, mid-write, no shutdown code runs.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits until the process exits by itself; its exit status (a string),
    /// or `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status.to_string()),
            Ok(Err(e)) => Some(format!("wait failed: {e}")),
            Err(_) => None,
        }
    }

    /// SIGSTOP: the process stalls (its sockets stay open).
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::stop`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status();
        }
    }

    /// Graceful: `quit`, then wait for the exit. Returns whether the process
    /// exited by itself with success within 10 s (it is killed otherwise).
    pub async fn quit(mut self) -> bool {
        {
            let mut stdin = self.stdin.lock().await;
            let _ = stdin.write_all(b"0 quit\n").await;
            let _ = stdin.flush().await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            Ok(Err(_)) => false,
            Err(_) => {
                let _ = self.child.kill().await;
                false
            }
        }
    }

    /// Polls `status` until `pred` holds on its `key=value` fields, or
    /// `timeout` passes; returns the last answer.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(s) = self.ok("status").await {
                let st = Status(s.clone());
                if pred(&st) {
                    return Ok(st);
                }
                last = s;
            }
            // wait for the node's own view to change (bounded: some of the
            // fields, event lag, move without a notification)
            let _ = self.call("changed 50", Duration::from_secs(2)).await;
        }
        Err(format!(
            "node {}: status never matched (last: {last})",
            self.id
        ))
    }

    /// Polls `health` until `pred` holds on its fields
    /// (`role term leader applied ready`), or `timeout` passes.
    pub async fn wait_health(
        &self,
        timeout: Duration,
        pred: impl Fn(&[&str]) -> bool,
    ) -> Result<String, String> {
        self.wait_for("health", timeout, |h| {
            let f: Vec<&str> = h.split_whitespace().collect();
            pred(&f)
        })
        .await
    }

    /// Waits until this node is ready and names a leader; returns the
    /// leader's id.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, String> {
        let h = self
            .wait_health(timeout, |f| {
                f.len() == 5 && f[2] != "none" && f[4] == "true"
            })
            .await?;
        h.split_whitespace()
            .nth(2)
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("node {}: no leader in `{h}`", self.id))
    }

    /// Polls `cmd` until `pred` holds on its `ok` answer, or `timeout` passes.
    pub async fn wait_for(
        &self,
        cmd: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(h) = self.ok(cmd).await {
                if pred(&h) {
                    return Ok(h);
                }
                last = h;
            }
            // wait for the node's own view to change (bounded: some of the
            // fields, event lag, move without a notification)
            let _ = self.call("changed 50", Duration::from_secs(2)).await;
        }
        Err(format!(
            "node {}: `{cmd}` never matched (last: {last})",
            self.id
        ))
    }
}

/// The answer to `status`: `key=value` fields, `not_ready` last.
#[derive(Debug, Clone)]
pub struct Status(pub String);

impl Status {
    /// The value of `key` (`not_ready` runs to the end of the line).
    pub fn get(&self, key: &str) -> &str {
        let pat = format!("{key}=");
        let Some(i) = self.0.find(&pat) else {
            return "";
        };
        let rest = &self.0[i + pat.len()..];
        if key == "not_ready" {
            rest
        } else {
            rest.split_whitespace().next().unwrap_or("")
        }
    }

    /// The value of `key` as a number (0 if absent or `none`).
    pub fn num(&self, key: &str) -> u64 {
        self.get(key).parse().unwrap_or(0)
    }
}
