//! Where command handlers run: on a large stack (256 MiB, reserved, its
//! pages committed only as a handler really goes that deep), so deep
//! recursion in a handler (or in decoding deeply nested user data) does
//! not overflow a 2 MiB async worker stack and abort the process. The
//! calling worker switches to the node's apply stack for the batch
//! (`raft/stack.rs`), without handing it to another thread; once a batch
//! has taken long (a handler that computes for milliseconds), batches go
//! to a dedicated apply thread with a stack of the same size for a while,
//! so that slow handlers do not hold a runtime worker.
//!
//! And the marker that makes what cannot be guarded visible: before each
//! entry is applied, "applying N ..." is written to `<data dir>/applying`;
//! after each batch, "idle". A node that restarts and finds a marker knows
//! which entry it died inside, and how many times in a row (`died=`), which
//! is what the poison-pill rule reads (`raft/poison.rs`); a node that stops
//! before such an entry records "stalled N ..." there. The file is mapped
//! into memory, so a record is a 256-byte copy into the page cache, not a
//! system call per entry: the page belongs to the kernel and survives the
//! process aborting, which is the fault it is for (no fsync, except for a
//! promise not to run an entry again: a machine crash loses the rest).

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use parking_lot::Mutex;

use super::stack::BigStack;

/// The apply stack's size (reserved address space; pages are only
/// committed when a handler really goes that deep).
const APPLY_STACK: usize = 256 << 20;

/// A batch that takes this much CPU time sends the next ones to the apply
/// thread for [`SLOW_FOR`], so that slow handlers do not hold a runtime
/// worker (CPU time: a batch preempted on a busy machine is not slow).
const SLOW_BATCH: Duration = Duration::from_millis(10);
const SLOW_FOR: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// The apply stack, and the apply thread for slow handlers.
pub(crate) struct Applier {
    jobs: Mutex<Jobs>,
    /// `None` if it could not be mapped: every batch goes to the thread.
    stack: Mutex<Option<BigStack>>,
    /// Until when batches go to the thread (a recent batch was slow).
    slow_until: std::sync::Arc<Mutex<Option<Instant>>>,
}

/// The apply thread, started when a batch first needs it (most nodes
/// never do: no thread and no second 256 MiB reservation).
enum Jobs {
    NotStarted,
    Running(mpsc::Sender<Job>),
    Stopped,
}

fn spawn_thread() -> io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("catga-apply".into())
        .stack_size(APPLY_STACK)
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        })?;
    Ok(tx)
}

impl Applier {
    pub(crate) fn start() -> io::Result<Applier> {
        let stack = match BigStack::new(APPLY_STACK) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot map the apply stack: handlers run on the apply thread");
                None
            }
        };
        Ok(Applier {
            jobs: Mutex::new(Jobs::NotStarted),
            stack: Mutex::new(stack),
            slow_until: Default::default(),
        })
    }

    /// Runs `f` on a large stack: here, on the node's apply stack, or on
    /// the apply thread while handlers are slow (or the stack is in use),
    /// waiting for it without blocking the runtime. Refused once stopped.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<R> {
        let stopped = || io::Error::other("the apply thread is stopped");
        if matches!(*self.jobs.lock(), Jobs::Stopped) {
            return Err(stopped());
        }
        let slow = self.slow_until.lock().is_some_and(|t| Instant::now() < t);
        if !slow
            && let Some(mut guard) = self.stack.try_lock()
            && let Some(stack) = guard.as_mut()
        {
            let t = cpu_now();
            // as on the thread: a panic outside the handlers' own guard
            // (they catch theirs) fails the batch, not the runtime's task
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stack.run(f)));
            note(&self.slow_until, t);
            return r.map_err(|_| io::Error::other("applying a batch panicked"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slow_until = self.slow_until.clone();
        let job: Job = Box::new(move || {
            let t = cpu_now();
            let r = f();
            note(&slow_until, t);
            let _ = tx.send(r);
        });
        {
            let mut jobs = self.jobs.lock();
            if matches!(*jobs, Jobs::NotStarted) {
                *jobs = Jobs::Running(spawn_thread()?);
            }
            let sent = match &*jobs {
                Jobs::Running(sender) => sender.send(job).is_ok(),
                _ => false,
            };
            if !sent {
                return Err(stopped());
            }
        }
        rx.await
            .map_err(|_| io::Error::other("the apply thread panicked"))
    }

    /// Lets the thread (if it started) end once its last job is done;
    /// later batches are refused.
    pub(crate) fn stop(&self) {
        *self.jobs.lock() = Jobs::Stopped;
    }
}

/// This thread's CPU time so far.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; this clock exists on every Linux
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A batch that started at CPU time `t` (of this thread) just ended: a
/// slow one sends the next batches to the thread for a while.
fn note(slow_until: &Mutex<Option<Instant>>, t: Duration) {
    if cpu_now().saturating_sub(t) >= SLOW_BATCH {
        *slow_until.lock() = Some(Instant::now() + SLOW_FOR);
    }
}

/// The size of a marker record: one line, padded, always written whole at
/// offset 0 so a shorter record never leaves the tail of a longer one.
const RECORD: usize = 256;

/// `<data dir>/applying`, mapped.
pub(crate) struct Marker {
    map: Mutex<MmapMut>,
    /// Names this program (see [`program_id`]).
    exe: u64,
}

/// What a previous run left in the marker: the entry it was applying when
/// it died, or the entry it was stopped before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InProgress {
    pub(crate) index: u64,
    pub(crate) name: String,
    /// How many runs had died inside this entry before the one that wrote
    /// the record.
    pub(crate) died: u32,
    /// The program that wrote it (0: unknown, an older record).
    pub(crate) exe: u64,
    /// The run was stopped before the entry (it did not die inside it).
    pub(crate) stalled: bool,
    /// That run promised not to run the entry again (`raft/poison.rs`).
    pub(crate) promised: bool,
}

/// Names the program that runs: its path, size and modification time,
/// hashed (a new build deployed over the old one differs). 0 if unknown.
fn program_id() -> u64 {
    let Ok(exe) = std::env::current_exe() else {
        return 0;
    };
    let Ok(meta) = std::fs::metadata(&exe) else {
        return 0;
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let text = format!("{} {} {mtime}", exe.display(), meta.len());
    // FNV-1a: stable, and 0 is left for "unknown"
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

fn path(dir: &Path) -> PathBuf {
    dir.join("applying")
}

impl Marker {
    /// Reads what the previous run left, then opens the marker for this run.
    pub(crate) fn open(dir: &Path) -> io::Result<(Marker, Option<InProgress>)> {
        let previous = match std::fs::read(path(dir)) {
            Ok(bytes) => parse(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path(dir))?;
        file.set_len(RECORD as u64)?;
        // SAFETY: the mapping is only ever written through this `Marker`,
        // and catga never truncates the file while it is mapped. Another
        // process shrinking it would fault this one, but a data dir serves
        // one node process: two on one dir would corrupt its log anyway.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok((
            Marker {
                map: Mutex::new(map),
                exe: program_id(),
            },
            previous,
        ))
    }

    /// Names the program that runs (see [`program_id`]).
    pub(crate) fn exe(&self) -> u64 {
        self.exe
    }

    /// Records that entry `index` (`name`) is about to be applied, after
    /// `died` runs died inside it.
    pub(crate) fn applying(&self, index: u64, name: &str, died: u32) -> io::Result<()> {
        let exe = self.exe;
        self.write(|w| write!(w, "applying {index} died={died} exe={exe:x} {name}"))
    }

    /// Records that this run stopped before entry `index` after `died`
    /// runs died inside it; `promised`: it must not run the entry again on
    /// its own, and the record is synced to disk before this returns.
    pub(crate) fn stalled(
        &self,
        index: u64,
        name: &str,
        died: u32,
        promised: bool,
    ) -> io::Result<()> {
        let (exe, p) = (self.exe, promised as u8);
        self.write(|w| {
            write!(
                w,
                "stalled {index} died={died} exe={exe:x} promised={p} {name}"
            )
        })?;
        if promised {
            self.map.lock().flush()?;
        }
        Ok(())
    }

    /// Records that no entry is being applied.
    pub(crate) fn idle(&self) -> io::Result<()> {
        self.write(|w| w.write_all(b"idle"))
    }

    /// One record, padded with spaces, written whole at offset 0 (a long
    /// name is cut; the record always ends in a newline).
    fn write(&self, line: impl FnOnce(&mut &mut [u8]) -> io::Result<()>) -> io::Result<()> {
        let mut rec = [b' '; RECORD];
        {
            let mut w: &mut [u8] = &mut rec[..RECORD - 1];
            // a line longer than the record is cut ("failed to write
            // whole buffer" once the slice is full): what fits is kept
            let _ = line(&mut w);
        }
        rec[RECORD - 1] = b'\n';
        self.map.lock()[..RECORD].copy_from_slice(&rec);
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Option<InProgress> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut words = text.split_whitespace();
    let stalled = match words.next()? {
        "applying" => false,
        "stalled" => true,
        _ => return None,
    };
    let index = words.next()?.parse().ok()?;
    let mut p = InProgress {
        index,
        name: String::new(),
        died: 0,
        exe: 0,
        stalled,
        promised: false,
    };
    // `key=value` fields, then the name (older records: the name only)
    for w in words {
        match w.split_once('=') {
            Some(("died", v)) => p.died = v.parse().ok()?,
            Some(("exe", v)) => p.exe = u64::from_str_radix(v, 16).ok()?,
            Some(("promised", v)) => p.promised = v == "1",
            _ => {
                p.name = w.to_string();
                break;
            }
        }
    }
    (!p.name.is_empty()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_string)
    }

    #[tokio::test]
    async fn batches_run_here_on_the_apply_stack_until_one_is_slow_then_on_the_thread() {
        let a = Applier::start().unwrap();
        let here = thread_name();
        assert_eq!(a.run(thread_name).await.unwrap(), here);
        // a batch that computes for longer than SLOW_BATCH (CPU time)
        a.run(|| {
            let t = cpu_now();
            let mut x = 0u64;
            while cpu_now() - t < SLOW_BATCH + Duration::from_millis(2) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            x
        })
        .await
        .unwrap();
        // the next ones go to the apply thread (its stack is as large)
        assert_eq!(
            a.run(thread_name).await.unwrap().as_deref(),
            Some("catga-apply")
        );
        a.stop();
        assert!(a.run(|| 1).await.is_err(), "refused once stopped");
    }

    #[test]
    fn the_marker_tells_the_next_run_which_entry_was_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (m, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(prev, None);
        m.applying(12345, "shop.PlaceOrderWithAVeryLongName", 0)
            .unwrap();
        m.applying(7, "shop.Restock", 1).unwrap();
        let exe = m.exe();
        drop(m);
        let (m, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(
            prev,
            Some(InProgress {
                index: 7,
                name: "shop.Restock".into(),
                died: 1,
                exe,
                stalled: false,
                promised: false,
            })
        );
        m.stalled(7, "shop.Restock", 2, true).unwrap();
        drop(m);
        let (m, prev) = Marker::open(dir.path()).unwrap();
        let prev = prev.unwrap();
        assert!(prev.stalled && prev.promised && prev.died == 2 && prev.index == 7);
        m.idle().unwrap();
        drop(m);
        let (_, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(prev, None);
    }

    #[test]
    fn a_record_of_an_older_version_still_names_the_entry() {
        let p = parse(b"applying 9 shop.Restock            \n").unwrap();
        assert_eq!(
            (p.index, p.name.as_str(), p.died, p.exe),
            (9, "shop.Restock", 0, 0)
        );
        assert!(!p.stalled);
    }

    #[tokio::test]
    async fn the_apply_thread_has_a_deep_stack() {
        fn burn(n: u32) -> u64 {
            let buf = std::hint::black_box([n as u8; 1024]);
            let below = if n == 0 { 0 } else { burn(n - 1) };
            below + buf.iter().map(|b| *b as u64).sum::<u64>()
        }
        let a = Applier::start().unwrap();
        // ~16 MiB of stack: far past a 2 MiB worker thread
        let r = a.run(|| burn(16 * 1024)).await.unwrap();
        assert!(r > 0);
        a.stop();
        assert!(a.run(|| ()).await.is_err());
    }
}
