//! Snapshots on disk, streamed: written from the state straight to a file,
//! sent from the file in chunks, received into a file, restored from the
//! file. No step holds the encoded state in memory, so a node's memory while
//! snapshotting is its state plus a few buffers, whatever the state's size.
//!
//! `snapshot.bin` is the machine's snapshot stream (see
//! `Machine::snapshot_to`), then a trailer: the Raft meta and this node's
//! undelivered events, rmp-serde encoded, its length (u64 little-endian)
//! and the magic `CATGASN2`. Only the stream (`[0, len)`) is sent to other
//! nodes: the events are this node's own. A file without the magic is the
//! format of earlier versions (one rmp-serde value, the state as bytes
//! inside) and is read once, then rewritten.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::events::EventBatch;
use super::state_machine::Meta;
use crate::machine::Machine;

const MAGIC: &[u8; 8] = b"CATGASN2";
const TAIL: u64 = 16;
/// The trailer holds the meta and a bounded event backlog; anything larger
/// is a damaged file, not a trailer.
const MAX_TRAILER: u64 = 1 << 30;
const BUF: usize = 1 << 20;

pub(crate) const NAME: &str = "snapshot.bin";
const TMP: &str = "snapshot.bin.tmp";
/// Where a snapshot sent by the leader is received.
pub(crate) const INCOMING: &str = "snapshot.incoming";

/// A snapshot's state stream on disk: what openraft holds and what the
/// network sends. Cheap to clone; the open file outlives a newer snapshot
/// replacing it on disk, so a transfer in progress is never cut short.
#[derive(Clone, Debug)]
pub(crate) struct SnapFile {
    file: Arc<File>,
    /// Length of the state stream (the trailer, if any, follows it).
    pub(crate) len: u64,
}

impl SnapFile {
    /// A received stream: the whole file.
    pub(crate) fn whole(file: File) -> io::Result<SnapFile> {
        let len = file.metadata()?.len();
        Ok(SnapFile {
            file: Arc::new(file),
            len,
        })
    }

    /// Reads up to `max` bytes of the stream at `offset` (blocking).
    pub(crate) fn read_chunk(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let n = (self.len.saturating_sub(offset)).min(max as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// A buffered reader over the stream (blocking reads).
    pub(crate) fn reader(&self) -> impl Read + '_ {
        BufReader::with_capacity(
            BUF,
            Pread {
                file: &self.file,
                pos: 0,
                end: self.len,
            },
        )
    }

    /// Restores a machine from the stream (blocking; call it on a big stack:
    /// user states may nest deeply).
    pub(crate) fn restore(&self) -> crate::error::Result<Machine> {
        let mut m = Machine::new()?;
        m.restore_from(&mut self.reader())?;
        Ok(m)
    }
}

/// Positional reads, so clones of one file never share a cursor.
struct Pread<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Pread<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    meta: Meta,
    events: Vec<EventBatch>,
}

/// The file of earlier versions.
#[derive(Deserialize)]
struct Legacy {
    meta: Meta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(default)]
    events: Vec<EventBatch>,
}

/// What [`open`] found.
pub(crate) struct Loaded {
    pub(crate) meta: Meta,
    pub(crate) events: Vec<EventBatch>,
    pub(crate) machine: Machine,
    pub(crate) file: SnapFile,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

/// Opens `dir/snapshot.bin` and restores its machine; `None` if there is
/// none. Blocking, on a big stack.
pub(crate) fn open(dir: &Path) -> io::Result<Option<Loaded>> {
    let path = dir.join(NAME);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut tail = [0u8; TAIL as usize];
    let current = size >= TAIL && {
        file.read_exact_at(&mut tail, size - TAIL)?;
        &tail[8..] == MAGIC
    };
    if !current {
        return open_legacy(dir, &path, file).map(Some);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&tail[..8]);
    let trailer_len = u64::from_le_bytes(n);
    if trailer_len > MAX_TRAILER || trailer_len > size - TAIL {
        return Err(bad(&path, "damaged trailer"));
    }
    let len = size - TAIL - trailer_len;
    file.seek(SeekFrom::Start(len))?;
    let trailer: Trailer = crate::codec::decode_from(
        &mut BufReader::new((&file).take(trailer_len)),
        crate::codec::INTERNAL_DEPTH,
    )
    .map_err(|e| bad(&path, e))?;
    let snap = SnapFile {
        file: Arc::new(file),
        len,
    };
    let machine = run_big(|| snap.restore())?.map_err(|e| bad(&path, e))?;
    Ok(Some(Loaded {
        meta: trailer.meta,
        events: trailer.events,
        machine,
        file: snap,
    }))
}

fn open_legacy(dir: &Path, path: &Path, mut file: File) -> io::Result<Loaded> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let old: Legacy =
        crate::codec::decode(&bytes, crate::codec::INTERNAL_DEPTH).map_err(|e| bad(path, e))?;
    drop(bytes);
    let data = old.data;
    let machine = run_big(move || {
        let mut m = Machine::new()?;
        m.restore(&data).map(|_| m)
    })?
    .map_err(|e| bad(path, e))?;
    // rewritten in the current format, so that it can be sent in chunks
    let file = write(dir, &old.meta, &old.events, false, &machine, |m, w| {
        m.snapshot_to(w)
    })?
    .ok_or_else(|| io::Error::other("rewriting the snapshot"))?;
    Ok(Loaded {
        meta: old.meta,
        events: old.events,
        machine,
        file,
    })
}

fn run_big<R: Send>(f: impl FnOnce() -> R + Send) -> io::Result<R> {
    crate::codec::on_big_stack_sync(f)
}

/// Writes a new `snapshot.bin`: the stream `fill` writes, then the trailer;
/// synced, then renamed over the old one. Blocking.
///
/// `guard` keeps the state `fill` reads from changing (the state's read
/// lock); it is dropped as soon as the state is no longer needed. With
/// `in_child`, `fill` runs in a forked copy of this process (as Redis
/// saves): the state is frozen there by copy-on-write, so the guard is
/// dropped (and writers go on) right after the fork, a few milliseconds,
/// however long encoding takes; memory grows only by the pages writers
/// change meanwhile. `Ok(None)` when the child could not do it (no fork, it
/// failed, it stopped progressing): the caller builds again in-process.
pub(crate) fn write<G>(
    dir: &Path,
    meta: &Meta,
    events: &[EventBatch],
    in_child: bool,
    guard: G,
    fill: impl FnOnce(&G, &mut dyn Write) -> crate::error::Result<()>,
) -> io::Result<Option<SnapFile>> {
    let (file, tmp) = start(dir)?;
    #[cfg(target_os = "linux")]
    if in_child {
        if !child::fill(&file, guard, fill)? {
            return Ok(None);
        }
        return finish(dir, file, len_of(tmp)?, meta, events).map(Some);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = in_child;
    let mut w = BufWriter::with_capacity(BUF, &file);
    fill(&guard, &mut w).map_err(io::Error::other)?;
    w.flush()?;
    drop(w);
    drop(guard);
    finish(dir, file, len_of(tmp)?, meta, events).map(Some)
}

/// Encoding a snapshot in a forked child (Linux).
#[cfg(target_os = "linux")]
mod child {
    use std::fs::File;
    use std::io::{self, BufWriter, Write};
    use std::time::{Duration, Instant};

    /// A child that writes nothing for this long is stuck (a user
    /// `Serialize` waiting on a lock another thread held at the fork).
    const STUCK_AFTER: Duration = Duration::from_secs(30);

    /// Runs `fill` into `file` in a forked child, drops `guard` in this
    /// process right after the fork, and waits for the child. `Ok(false)`
    /// when the child could not do it (the caller builds in-process).
    pub(super) fn fill<G>(
        file: &File,
        guard: G,
        fill: impl FnOnce(&G, &mut dyn Write) -> crate::error::Result<()>,
    ) -> io::Result<bool> {
        // SAFETY: the child runs only `fill` (encoding the state into the
        // inherited file descriptor, with the allocator, which glibc and
        // jemalloc make usable after fork) and leaves with `_exit`, so no
        // destructor, atexit hook or other thread's lock is touched. A
        // child that hangs anyway is killed (see STUCK_AFTER).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "cannot fork to write a snapshot; writing it in-process (writes wait meanwhile)"
            );
            return Ok(false);
        }
        if pid == 0 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut w = BufWriter::with_capacity(super::BUF, file);
                fill(&guard, &mut w).is_ok() && w.flush().is_ok()
            }))
            .unwrap_or(false);
            // SAFETY: ends the child at once, running nothing else.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        drop(guard);
        let mut size = 0;
        let mut moved = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child, without blocking.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    return Ok(true);
                }
                tracing::warn!(
                    status,
                    "the child writing a snapshot failed; writing it in-process"
                );
                return Ok(false);
            }
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            let now = file.metadata()?.len();
            if now != size {
                size = now;
                moved = Instant::now();
            } else if moved.elapsed() > STUCK_AFTER {
                // SAFETY: signals and reaps our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                tracing::warn!(
                    "the child writing a snapshot made no progress for {STUCK_AFTER:?}; \
                     killed it, writing the snapshot in-process"
                );
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Writes a new `snapshot.bin` whose state stream is `from`'s (a received
/// snapshot), then the trailer. Blocking.
pub(crate) fn write_copy(
    dir: &Path,
    from: &SnapFile,
    meta: &Meta,
    events: &[EventBatch],
) -> io::Result<SnapFile> {
    let (file, _) = start(dir)?;
    let mut w = BufWriter::with_capacity(BUF, &file);
    let copied = io::copy(&mut from.reader(), &mut w)?;
    w.flush()?;
    drop(w);
    if copied != from.len {
        return Err(io::Error::other(format!(
            "snapshot copy: {copied} of {} bytes",
            from.len
        )));
    }
    finish(dir, file, copied, meta, events)
}

fn start(dir: &Path) -> io::Result<(File, PathBuf)> {
    let tmp = dir.join(TMP);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    Ok((file, tmp))
}

fn len_of(tmp: PathBuf) -> io::Result<u64> {
    Ok(std::fs::metadata(tmp)?.len())
}

fn finish(
    dir: &Path,
    file: File,
    len: u64,
    meta: &Meta,
    events: &[EventBatch],
) -> io::Result<SnapFile> {
    let trailer = crate::codec::encode(&Trailer {
        meta: meta.clone(),
        events: events.to_vec(),
    })
    .map_err(io::Error::other)?;
    {
        let mut w = BufWriter::new(&file);
        w.seek(SeekFrom::Start(len))?;
        w.write_all(&trailer)?;
        w.write_all(&(trailer.len() as u64).to_le_bytes())?;
        w.write_all(MAGIC)?;
        w.flush()?;
    }
    file.sync_all()?;
    std::fs::rename(dir.join(TMP), dir.join(NAME))?;
    File::open(dir)?.sync_all()?;
    Ok(SnapFile {
        file: Arc::new(file),
        len,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    /// The child writes what `fill` writes; the guard is dropped in this
    /// process while the child may still run.
    #[test]
    fn a_forked_child_writes_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("s"))
            .unwrap();
        let lock = parking_lot::RwLock::new(vec![7u8; 3 << 20]);
        let g = lock.read();
        let done = super::child::fill(&file, g, |g, w| {
            w.write_all(g)
                .map_err(|e| crate::error::Error::Snapshot(e.to_string()))
        })
        .unwrap();
        assert!(done);
        // the parent's lock is free again
        lock.write().push(1);
        let mut back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 3 << 20]);
    }

    /// A child whose `fill` fails or panics says so: the caller builds
    /// in-process instead.
    #[test]
    fn a_failing_child_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("s")).unwrap();
        let failed = super::child::fill(&file, (), |_, _| {
            Err(crate::error::Error::Snapshot("no".into()))
        })
        .unwrap();
        assert!(!failed);
        let panicked = super::child::fill(&file, (), |_, _| panic!("in the child")).unwrap();
        assert!(!panicked);
    }
}
