//! A network of node processes in network namespaces, for partition tests:
//! [`Net::new`] makes one namespace per node, each with a TUN device
//! (`tun0`, address `10.77.0.<id>/24`), and a router thread in this
//! process that moves every IPv4 packet from one node's TUN to another's,
//! applying the links' rules: cut (dropped silently, no reset, as on a
//! real link that goes dark), delay with jitter (order kept per link),
//! random loss. The nodes' TCP stacks are the kernel's, so a cut makes
//! their retransmission timers back off exactly as they would on a
//! network.
//!
//! Why a router here and not `tc netem` and a bridge: the router needs
//! only `/dev/net/tun` and `ip` (iproute2), while netem and tc's drop
//! actions are kernel modules that many CI kernels (and this project's
//! own test machine) do not have.
//!
//! The namespaces are deleted when the [`Net`] drops (also on a panic);
//! names carry this process's pid, and a `Net` deletes the namespaces of
//! dead test processes it finds. Needs root ([`Net::available`] says what
//! is skipped otherwise).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A link direction's queue of packets and when each is due.
type Queue = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// The subnet every node's TUN is on (each test's namespaces are its own,
/// so tests running at once may all use it).
const SUBNET: [u8; 3] = [10, 77, 0];

/// The rules of one direction of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    /// Every packet is dropped.
    pub cut: bool,
    /// One-way delay.
    pub delay: Duration,
    /// A uniform random extra delay in `[0, jitter)` (order is kept).
    pub jitter: Duration,
    /// The chance that a packet is dropped, `0.0..=1.0`.
    pub loss: f64,
}

impl Link {
    /// A slow link: `delay` one way, `jitter`, `loss`.
    pub fn slow(delay: Duration, jitter: Duration, loss: f64) -> Link {
        Link {
            cut: false,
            delay,
            jitter,
            loss,
        }
    }
}

/// Packets the router moved and dropped, in total.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub forwarded: u64,
    pub dropped: u64,
}

struct Rules {
    /// (from, to) → rules; absent = a clean link.
    links: HashMap<(u64, u64), Link>,
    counts: Counts,
    rng: u64,
}

impl Rules {
    fn link(&self, from: u64, to: u64) -> Link {
        self.links.get(&(from, to)).copied().unwrap_or_default()
    }

    /// xorshift64*: a uniform float in [0, 1).
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The namespaces and the router of one test.
pub struct Net {
    prefix: String,
    ids: Vec<u64>,
    rules: Arc<Mutex<Rules>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    router: Option<std::thread::JoinHandle<()>>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Net {
    /// Whether this process can build a [`Net`]: root, `/dev/net/tun` and
    /// `ip`. When it cannot, prints one line saying what `test` skips.
    #[must_use]
    pub fn available(test: &str) -> bool {
        let why = if unsafe { libc::geteuid() } != 0 {
            Some("needs root (network namespaces)")
        } else if !Path::new("/dev/net/tun").exists() {
            Some("needs /dev/net/tun")
        } else if Command::new("ip").arg("-V").output().is_err() {
            Some("needs `ip` (iproute2)")
        } else {
            None
        };
        if let Some(why) = why {
            use std::io::Write;
            // the real stderr: libtest captures eprintln! of passing tests
            let _ = writeln!(
                io::stderr(),
                "SKIPPED {test}: {why}; run the suite as root on Linux to run it"
            );
        }
        why.is_none()
    }

    /// A namespace per id in `ids`, joined by the router; every link clean.
    pub fn new(ids: &[u64]) -> io::Result<Net> {
        sweep_dead();
        let prefix = format!(
            "catga-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let mut net = Net {
            prefix,
            ids: Vec::new(),
            rules: Arc::new(Mutex::new(Rules {
                links: HashMap::new(),
                counts: Counts::default(),
                rng: seed,
            })),
            stop: None,
            router: None,
        };
        let mut tuns = HashMap::new();
        for &id in ids {
            if id == 0 || id > 250 {
                return Err(io::Error::other(format!("node id {id}: use 1..=250")));
            }
            let ns = net.ns(id);
            ip(&["netns", "add", &ns])?;
            // from here on, Drop deletes it
            net.ids.push(id);
            let fd = in_netns(&ns, open_tun)?;
            let addr = format!("{}.{}.{}.{id}/24", SUBNET[0], SUBNET[1], SUBNET[2]);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "tun0"])?;
            ip(&["-n", &ns, "link", "set", "tun0", "up"])?;
            tuns.insert(id, fd);
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let rules = net.rules.clone();
        let router = std::thread::Builder::new()
            .name(format!("{}-router", net.prefix))
            .spawn(move || route(tuns, rules, stop_rx))?;
        net.stop = Some(stop_tx);
        net.router = Some(router);
        Ok(net)
    }

    /// The namespace of node `id` (for `ip netns exec`).
    pub fn ns(&self, id: u64) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// Node `id`'s address with `port`, reachable from the other nodes.
    pub fn addr(&self, id: u64, port: u16) -> String {
        format!("{}.{}.{}.{id}:{port}", SUBNET[0], SUBNET[1], SUBNET[2])
    }

    /// Sets the rules of the link `from` → `to` (one direction).
    pub fn set(&self, from: u64, to: u64, link: Link) {
        let mut r = self.rules.lock().expect("rules");
        r.links.insert((from, to), link);
    }

    fn update(&self, a: u64, b: u64, f: impl Fn(&mut Link)) {
        let mut r = self.rules.lock().expect("rules");
        for k in [(a, b), (b, a)] {
            f(r.links.entry(k).or_default());
        }
    }

    /// Cuts the link between `a` and `b`, both ways (silently: packets
    /// vanish).
    pub fn cut(&self, a: u64, b: u64) {
        self.update(a, b, |l| l.cut = true);
    }

    /// Heals the link between `a` and `b` (its delay and loss stay).
    pub fn heal(&self, a: u64, b: u64) {
        self.update(a, b, |l| l.cut = false);
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: u64) {
        for &o in &self.ids {
            if o != id {
                self.cut(id, o);
            }
        }
    }

    /// Splits the nodes into `groups`: links inside a group are healed,
    /// links between groups cut.
    pub fn partition(&self, groups: &[&[u64]]) {
        let group = |id: u64| groups.iter().position(|g| g.contains(&id));
        for &a in &self.ids {
            for &b in &self.ids {
                if a < b {
                    if group(a) == group(b) {
                        self.heal(a, b);
                    } else {
                        self.cut(a, b);
                    }
                }
            }
        }
    }

    /// Heals every link (delays and loss stay).
    pub fn heal_all(&self) {
        let mut r = self.rules.lock().expect("rules");
        for l in r.links.values_mut() {
            l.cut = false;
        }
    }

    /// Gives every link, both ways, `delay` one way, `jitter` and `loss`
    /// (cuts stay).
    pub fn slow_all(&self, delay: Duration, jitter: Duration, loss: f64) {
        for &a in &self.ids {
            for &b in &self.ids {
                if a != b {
                    let mut r = self.rules.lock().expect("rules");
                    let l = r.links.entry((a, b)).or_default();
                    l.delay = delay;
                    l.jitter = jitter;
                    l.loss = loss;
                }
            }
        }
    }

    /// Packets moved and dropped so far.
    pub fn counts(&self) -> Counts {
        self.rules.lock().expect("rules").counts
    }

    /// `GET path` on `127.0.0.1:port` inside node `id`'s namespace (its
    /// HTTP door, which the test process cannot reach otherwise): the
    /// status code and body.
    pub async fn http_get(&self, id: u64, port: u16, path: &str) -> io::Result<(u16, String)> {
        let ns = self.ns(id);
        let path = path.to_string();
        tokio::task::spawn_blocking(move || in_netns(&ns, move || http_get(port, &path)))
            .await
            .map_err(io::Error::other)?
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(r) = self.router.take() {
            let _ = r.join();
        }
        for id in &self.ids {
            let _ = ip(&["netns", "del", &self.ns(*id)]);
        }
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes the namespaces of test processes that are gone (a test binary
/// killed before its `Net` dropped).
fn sweep_dead() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("catga-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Runs `f` on a thread that entered the namespace `ns` (sockets and
/// devices it creates belong to `ns` for good).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = File::open(&path)?;
            // SAFETY: setns on this thread only; the fd is valid
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens `tun0` (IP packets, no extra header) in this thread's namespace,
/// non-blocking.
fn open_tun() -> io::Result<OwnedFd> {
    // SAFETY: a plain open; the fd is owned below
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..4].copy_from_slice(b"tun0");
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as
    if unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// A minimal HTTP/1.0 GET (blocking, 5 s deadlines).
fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The router thread: reads every node's TUN, applies the rules, writes
/// the packets it keeps to the destination's TUN when they are due.
fn route(
    tuns: HashMap<u64, OwnedFd>,
    rules: Arc<Mutex<Rules>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netns router: no runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut fds: HashMap<u64, Arc<AsyncFd<OwnedFd>>> = HashMap::new();
        for (id, fd) in tuns {
            // SAFETY: an OwnedFd's descriptor stays open and the same
            // while the AsyncFd owns it
            match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                Ok(a) => {
                    fds.insert(id, Arc::new(a));
                }
                Err(e) => {
                    eprintln!("netns router: node {id}'s tun: {}", e.into_parts().1);
                    return;
                }
            }
        }
        // one ordered queue per link direction, so a delayed packet never
        // overtakes an earlier one on the same link
        let mut queues: HashMap<(u64, u64), Queue> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        for &from in fds.keys() {
            for (&to, out) in &fds {
                if from == to {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                queues.insert((from, to), tx);
                tasks.spawn(deliver(from, to, out.clone(), rx, rules.clone()));
            }
        }
        for (&from, fd) in &fds {
            let q: HashMap<u64, _> = queues
                .iter()
                .filter(|((f, _), _)| *f == from)
                .map(|((_, t), tx)| (*t, tx.clone()))
                .collect();
            tasks.spawn(read_loop(from, fd.clone(), q, rules.clone()));
        }
        let _ = stop.await;
        tasks.abort_all();
    });
}

async fn read_loop(
    from: u64,
    fd: Arc<AsyncFd<OwnedFd>>,
    queues: HashMap<u64, Queue>,
    rules: Arc<Mutex<Rules>>,
) {
    let mut buf = vec![0u8; 65_536];
    // the last due time per destination: jitter never reorders a link
    let mut last: HashMap<u64, Instant> = HashMap::new();
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let n = match guard.try_io(|f| read_fd(f.get_ref().as_raw_fd(), &mut buf)) {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        };
        let pkt = &buf[..n];
        // IPv4 only (the kernel's IPv6 chatter on a new device is dropped)
        if n < 20 || pkt[0] >> 4 != 4 || pkt[16..19] != SUBNET {
            continue;
        }
        let to = pkt[19] as u64;
        let Some(q) = queues.get(&to) else {
            continue;
        };
        let due = {
            let mut r = rules.lock().expect("rules");
            let link = r.link(from, to);
            if link.cut || (link.loss > 0.0 && r.random() < link.loss) {
                r.counts.dropped += 1;
                continue;
            }
            let extra = link.jitter.mul_f64(r.random());
            Instant::now() + link.delay + extra
        };
        let due = match last.get(&to) {
            Some(l) if *l > due => *l,
            _ => due,
        };
        last.insert(to, due);
        let _ = q.send((due, pkt.to_vec()));
    }
}

async fn deliver(
    from: u64,
    to: u64,
    out: Arc<AsyncFd<OwnedFd>>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    rules: Arc<Mutex<Rules>>,
) {
    while let Some((due, pkt)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        {
            let mut r = rules.lock().expect("rules");
            // a link cut while the packet was on it loses it
            if r.link(from, to).cut {
                r.counts.dropped += 1;
                continue;
            }
            r.counts.forwarded += 1;
        }
        // a TUN write does not block; a full queue drops, as a NIC would
        let _ = write_fd(out.get_ref().as_raw_fd(), &pkt);
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
