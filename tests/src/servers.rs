//! Store servers for the discovery tests: the shared Redis / NATS named by
//! `REDIS_URL` / `NATS_URL`, and private `redis-server` / `nats-server -js`
//! children on free ports with temporary directories, which a test can kill
//! and restart (the child is killed when the guard drops).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The shared Redis URL (`REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared NATS URL (`NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test (or run) uses: for key prefixes, clusters, buckets.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the shared server at `url` (`scheme://host:port...`) accepts
/// connections. When it does not: panics if `CI` is set (a missing server
/// is a failure there), else returns `false` so the test can skip loudly.
pub fn shared_server_up(url: &str) -> bool {
    let addr = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let up = TcpStream::connect(&addr).is_ok();
    if !up {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no server answers at {url}"
        );
        eprintln!("SKIPPED: no server at {url} (set CI=1 to make this a failure)");
    }
    up
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Redis { persistent: bool },
    Nats,
}

/// A private server child process; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl ServerProcess {
    /// A `redis-server` with an append-only file (fsync always) in a temp
    /// dir, so that a restart keeps the data.
    pub fn redis() -> ServerProcess {
        Self::start_new(Kind::Redis { persistent: true })
    }

    /// A `redis-server` without persistence: a restart loses everything.
    pub fn redis_volatile() -> ServerProcess {
        Self::start_new(Kind::Redis { persistent: false })
    }

    /// A `nats-server -js` with its store in a temp dir.
    pub fn nats() -> ServerProcess {
        Self::start_new(Kind::Nats)
    }

    fn start_new(kind: Kind) -> ServerProcess {
        let mut server = ServerProcess {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.start();
        server
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis { .. } => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    fn command(&self, dir: &Path) -> Command {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis { persistent } => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", if persistent { "yes" } else { "no" }])
                    .args(["--appendfsync", "always"])
                    .arg("--dir")
                    .arg(dir);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-js", "-a", "127.0.0.1", "-p", &port])
                    .arg("-sd")
                    .arg(dir);
                c
            }
        };
        // redis logs to stdout, nats-server to stderr: both are read for
        // the server's own "ready" line, then drained
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// (Re)starts the server on its port and data dir; returns once it
    /// accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut child = self
            .command(self.dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.kind));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    // redis: "Ready to accept connections"; nats: "Server is ready"
                    if line.contains("Ready to accept connections")
                        || line.contains("Server is ready")
                    {
                        let _ = tx.send(());
                    }
                }
            });
        }
        drop(tx);
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => {}
            Err(e) => panic!("{:?} did not come up on {}: {e}", self.kind, self.port),
        }
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            "{:?} said it is ready but {} refuses connections",
            self.kind,
            self.port
        );
    }

    /// Kills the server (SIGKILL: a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
