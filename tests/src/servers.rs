//! Store servers for the discovery tests, started by the tests themselves:
//! one shared Redis / NATS per test process ([`shared_redis`],
//! [`shared_nats`]; or the servers named by `REDIS_URL` / `NATS_URL`), and
//! private `redis-server` / `nats-server -js` children on free ports with
//! temporary directories, which a test can kill and restart (the child is
//! killed when the guard drops). Only the binaries are needed on PATH
//! (Debian packages `redis-server` and `nats-server`); no service has to run.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::time::Duration;

/// The Redis every test of this process shares: `REDIS_URL` when it is
/// set, else one `redis-server` child (no persistence) on a free port,
/// started on first use and killed when the process exits. Tests on it use
/// their own keys ([`unique`]); a test that stops or restarts its server
/// starts a private one ([`ServerProcess::redis`]).
pub fn shared_redis() -> String {
    if let Some(url) = env_url("REDIS_URL") {
        return url;
    }
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| keep_until_exit(ServerProcess::redis_volatile()))
        .clone()
}

/// The NATS every test of this process shares: `NATS_URL` when it is set,
/// else one `nats-server -js` child on a free port with its store in a temp
/// dir, started on first use and killed when the process exits. Tests on it
/// use their own buckets / subjects ([`unique`]).
pub fn shared_nats() -> String {
    if let Some(url) = env_url("NATS_URL") {
        return url;
    }
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| keep_until_exit(ServerProcess::nats()))
        .clone()
}

fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The servers [`keep_until_exit`] keeps; killed (and their dirs removed)
/// by an `atexit` hook. A test process that dies without running it (a
/// signal) still takes them along: see [`spawn`].
static KEPT: Mutex<Vec<ServerProcess>> = Mutex::new(Vec::new());

fn keep_until_exit(server: ServerProcess) -> String {
    extern "C" fn stop_kept() {
        // take the list out so no lock is held while the servers stop
        let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|e| e.into_inner()));
        drop(kept);
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()`; atexit has no other
        // precondition.
        let rc = unsafe { libc::atexit(stop_kept) };
        assert_eq!(rc, 0, "atexit failed");
    });
    let url = server.url();
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(server);
    url
}

/// Spawns `cmd` from one thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills the server when this
/// process ends in any way (Linux sends the signal when the thread that
/// spawned the child exits, hence the one long-lived spawner thread).
fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // every sender is gone only when the process exits: park
                // so that the children keep their parent thread
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the server spawner thread");
        Mutex::new(tx)
    });
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("server spawner thread is gone");
    rx.recv().expect("server spawner thread is gone")
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

use crate::process::free_port;

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
        let mut child = spawn(self.command(self.dir.path())).unwrap_or_else(|e| {
            // (program, the Debian package that ships it)
            let (program, package) = match self.kind {
                Kind::Redis { .. } => ("redis-server", "redis-server"),
                Kind::Nats => ("nats-server", "nats-server"),
            };
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "`{program}` is not on PATH: this test starts its own {program}; \
                     install it (Debian/Ubuntu: `apt-get install {package}`)"
                )
            }
            panic!("cannot start {program}: {e}")
        });
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
