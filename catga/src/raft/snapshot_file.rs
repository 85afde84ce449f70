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
    let file = write(dir, &old.meta, &old.events, |w| machine.snapshot_to(w))?;
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
pub(crate) fn write(
    dir: &Path,
    meta: &Meta,
    events: &[EventBatch],
    fill: impl FnOnce(&mut dyn Write) -> crate::error::Result<()>,
) -> io::Result<SnapFile> {
    let (file, len) = start(dir)?;
    let mut w = BufWriter::with_capacity(BUF, &file);
    fill(&mut w).map_err(io::Error::other)?;
    w.flush()?;
    drop(w);
    finish(dir, file, len_of(len)?, meta, events)
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
