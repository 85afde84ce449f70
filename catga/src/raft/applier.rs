//! Where command handlers run: one long-lived thread per node with a large
//! stack, so deep recursion in a handler (or in decoding deeply nested user
//! data) does not overflow a 2 MiB async worker stack and abort the process.
//! And the marker that makes what cannot be guarded visible: before each
//! entry is applied, "applying N name" is written to `<data dir>/applying`;
//! after each batch, "idle". A node that restarts and finds a marker says,
//! at ERROR, which entry it died inside. The file is mapped into memory, so
//! a record is a 256-byte copy into the page cache, not a system call per
//! entry: the page belongs to the kernel and survives the process aborting,
//! which is the fault it is for (no fsync: a machine crash is not).

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use memmap2::MmapMut;

use parking_lot::Mutex;

/// The stack of the apply thread (reserved address space; pages are only
/// committed when a handler really goes that deep).
const APPLY_STACK: usize = 256 << 20;

type Job = Box<dyn FnOnce() + Send>;

/// The apply thread.
pub(crate) struct Applier {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Applier {
    pub(crate) fn start() -> io::Result<Applier> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("catga-apply".into())
            .stack_size(APPLY_STACK)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Applier {
            jobs: Mutex::new(Some(tx)),
        })
    }

    /// Runs `f` on the apply thread and waits for it without blocking the runtime.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = match &*self.jobs.lock() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(io::Error::other("the apply thread is stopped"));
        }
        rx.await
            .map_err(|_| io::Error::other("the apply thread panicked"))
    }

    /// Lets the thread end once its last job is done.
    pub(crate) fn stop(&self) {
        self.jobs.lock().take();
    }
}

/// The size of a marker record: one line, padded, always written whole at
/// offset 0 so a shorter record never leaves the tail of a longer one.
const RECORD: usize = 256;

/// `<data dir>/applying`, mapped.
pub(crate) struct Marker {
    map: Mutex<MmapMut>,
}

/// What a previous run left in the marker: the entry it was applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InProgress {
    pub(crate) index: u64,
    pub(crate) name: String,
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
            },
            previous,
        ))
    }

    /// Records that entry `index` (`name`) is about to be applied.
    pub(crate) fn applying(&self, index: u64, name: &str) -> io::Result<()> {
        self.write(|w| write!(w, "applying {index} {name}"))
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
    if words.next()? != "applying" {
        return None;
    }
    let index = words.next()?.parse().ok()?;
    let name = words.next()?.to_string();
    Some(InProgress { index, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_tells_the_next_run_which_entry_was_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (m, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(prev, None);
        m.applying(12345, "shop.PlaceOrderWithAVeryLongName")
            .unwrap();
        m.applying(7, "shop.Restock").unwrap();
        drop(m);
        let (m, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(
            prev,
            Some(InProgress {
                index: 7,
                name: "shop.Restock".into()
            })
        );
        m.idle().unwrap();
        drop(m);
        let (_, prev) = Marker::open(dir.path()).unwrap();
        assert_eq!(prev, None);
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
