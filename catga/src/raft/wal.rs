//! The write-ahead log file format behind [`super::log_store`].
//!
//! A log directory holds numbered segment files (`00000000000000000001.wal`,
//! ...). Each is a sequence of records:
//!
//! ```text
//! [len: u32 LE][crc32 of kind+body: u32 LE][kind: u8][body: len-1 bytes]
//! ```
//!
//! Records are replayed in order: `Entry` inserts (or replaces) an entry,
//! `Truncate` drops every entry from an index on, `Purge` drops every entry
//! up to an index and remembers the purged log id, `Vote` and `Committed`
//! replace the stored values. A torn or corrupt record at the end of the
//! last segment (a crash mid-write) ends the replay there and is cut off; one
//! anywhere else is reported as corruption. A new segment starts with the
//! current vote, purge point and commit point, so older segments whose
//! entries are all purged can be deleted without losing anything.
//!
//! Segments are zero-filled ahead of the writes (`reserve` bytes at a
//! time, 4 MiB by default: `ClusterBuilder::log_reserve`) and written in place, so a record's `fdatasync` flushes its data
//! only: appending to the end of a file changes its size and allocates
//! blocks, and each sync then writes the inode and the allocation metadata
//! too, a second synchronous I/O per commit (ext4 without a journal:
//! `ext4_write_inode` + `fsync_buffers_list`, half the kernel time of a
//! sync in a profile of `examples/bench`). A header of zeros ends a
//! segment's records.
//!
//! redb served first; a benchmark (see BENCHMARKS.md) showed its durable
//! commit (~250 µs, ~1 ms for 64 entries) dominating the write path, where an
//! append plus `fdatasync` costs ~150 µs regardless of the batch size.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Start a new segment once the current one is this large.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The default of [`Wal::open`]'s `reserve` (the tests' too).
#[cfg(test)]
const PREALLOC: u64 = 4 << 20;
/// Refuse records larger than this when reading (a corrupt length).
const MAX_RECORD: usize = 1 << 30;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;

/// One change to the log, as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// An encoded entry at an index.
    Entry(u64, Vec<u8>),
    /// Drop entries with index >= this.
    Truncate(u64),
    /// Drop entries with index <= this; the encoded purged log id.
    Purge(u64, Vec<u8>),
    /// The encoded vote.
    Vote(Vec<u8>),
    /// The encoded committed log id.
    Committed(Vec<u8>),
}

/// What a replay found.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub entries: BTreeMap<u64, Vec<u8>>,
    pub purged: Option<(u64, Vec<u8>)>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

impl Replayed {
    fn apply(&mut self, r: Record) {
        match r {
            Record::Entry(i, b) => {
                self.entries.insert(i, b);
            }
            Record::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Record::Purge(upto, id) => {
                self.entries = self.entries.split_off(&(upto + 1));
                self.purged = Some((upto, id));
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = Some(c),
        }
    }
}

/// Appends `r` to `buf`.
pub(crate) fn encode_record(r: &Record, buf: &mut Vec<u8>) {
    let (kind, a, b): (u8, Option<u64>, &[u8]) = match r {
        Record::Entry(i, bytes) => (ENTRY, Some(*i), bytes),
        Record::Truncate(i) => (TRUNCATE, Some(*i), &[]),
        Record::Purge(i, id) => (PURGE, Some(*i), id),
        Record::Vote(v) => (VOTE, None, v),
        Record::Committed(c) => (COMMITTED, None, c),
    };
    let len = 1 + a.map_or(0, |_| 8) + b.len();
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    if let Some(a) = a {
        buf.extend_from_slice(&a.to_le_bytes());
    }
    buf.extend_from_slice(b);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`: `Ok(Some((record, size)))`,
/// `Ok(None)` if `buf` ends before the record does or holds the zeros that
/// follow the last record, `Err` if it is corrupt.
pub(crate) fn decode_record(buf: &[u8]) -> Result<Option<(Record, usize)>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 && crc == 0 {
        // the zero-filled space after the last record
        return Ok(None);
    }
    if len == 0 || len > MAX_RECORD {
        return Err(format!("bad record length {len}"));
    }
    let Some(body) = buf.get(8..8 + len) else {
        return Ok(None);
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let (kind, rest) = (body[0], &body[1..]);
    let num = |rest: &[u8]| -> Result<(u64, Vec<u8>), String> {
        let n: [u8; 8] = rest
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or("record too short")?;
        Ok((u64::from_le_bytes(n), rest[8..].to_vec()))
    };
    let rec = match kind {
        ENTRY => {
            let (i, b) = num(rest)?;
            Record::Entry(i, b)
        }
        TRUNCATE => Record::Truncate(num(rest)?.0),
        PURGE => {
            let (i, b) = num(rest)?;
            Record::Purge(i, b)
        }
        VOTE => Record::Vote(rest.to_vec()),
        COMMITTED => Record::Committed(rest.to_vec()),
        k => return Err(format!("unknown record kind {k}")),
    };
    Ok(Some((rec, 8 + len)))
}

/// The open log: appends to the last segment.
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    /// (segment id, highest entry index written in it)
    segments: Vec<(u64, u64)>,
    /// Where the next record goes in the current segment.
    size: u64,
    /// The current segment's length on disk: `size..allocated` is zeros.
    allocated: u64,
    /// How far ahead of `size` to zero-fill (0: never).
    reserve: u64,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it; segments are
    /// zero-filled `reserve` bytes at a time ahead of the writes (0: not).
    pub(super) fn open(dir: &Path, reserve: u64) -> io::Result<(Wal, Replayed)> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut replayed = Replayed::default();
        let mut segments = Vec::new();
        let last = ids.last().copied();
        for id in &ids {
            let path = segment_path(dir, *id);
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let mut pos = 0;
            let mut max_index = 0;
            while pos < bytes.len() {
                match decode_record(&bytes[pos..]) {
                    Ok(Some((rec, size))) => {
                        if let Record::Entry(i, _) = &rec {
                            max_index = max_index.max(*i);
                        }
                        replayed.apply(rec);
                        pos += size;
                    }
                    Ok(None) if bytes[pos..].iter().all(|b| *b == 0) => {
                        // the zero-filled tail: the records end here
                        if Some(*id) == last {
                            // drop it, so that only records and zeros follow
                            let f = OpenOptions::new().write(true).open(&path)?;
                            f.set_len(pos as u64)?;
                            f.sync_all()?;
                        }
                        break;
                    }
                    Ok(None) | Err(_) if Some(*id) == last => {
                        // a torn write at the tail (the records of a write
                        // that was never acknowledged): cut it off
                        tracing::warn!(segment = %path.display(), at = pos, "discarding an incomplete record at the end of the log");
                        let f = OpenOptions::new().write(true).open(&path)?;
                        f.set_len(pos as u64)?;
                        f.sync_all()?;
                        break;
                    }
                    Ok(None) => {
                        return Err(io::Error::other(format!(
                            "{}: truncated record at byte {pos} in a segment that is not the last",
                            path.display()
                        )));
                    }
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "{}: corrupt record at byte {pos}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            segments.push((*id, max_index));
        }
        let (file, size) = match segments.last() {
            Some((id, _)) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, *id))?;
                let size = f.metadata()?.len();
                (f, size)
            }
            None => {
                segments.push((1, 0));
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, 1))?;
                sync_dir(dir)?;
                (f, 0)
            }
        };
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                file,
                segments,
                size,
                allocated: size,
                reserve,
                buf: Vec::with_capacity(1 << 16),
            },
            replayed,
        ))
    }

    /// Zero-fills the current segment past `size + need`, `reserve` bytes
    /// at a time (see the module's comment).
    /// The zeros reach the disk with the next sync, which then also writes
    /// the new length once; later syncs of records inside them do not. A
    /// failure (a full disk) is not an error here: the records are then
    /// written past the end as before, and fail there if they must.
    fn preallocate(&mut self, need: u64) {
        if self.reserve == 0 || self.size + need <= self.allocated {
            return;
        }
        let to = (self.size + need).max(self.allocated + self.reserve);
        let zeros = vec![0u8; (to - self.allocated) as usize];
        match self.file.write_all_at(&zeros, self.allocated) {
            Ok(()) => self.allocated = to,
            Err(e) => {
                tracing::debug!(error = %e, "could not zero-fill the log ahead of its writes");
                // whatever got written is zeros past the records
                self.allocated = self.file.metadata().map_or(self.size, |m| m.len());
            }
        }
    }

    /// Writes `records` with one write call; with `sync`, they are durable
    /// when this returns. `meta` gives the current vote, purge and commit
    /// records, written first into a new segment when one is started.
    pub(super) fn write(
        &mut self,
        records: &[Record],
        sync: bool,
        meta: impl FnOnce() -> Vec<Record>,
    ) -> io::Result<()> {
        if self.size >= SEGMENT_BYTES {
            self.rotate(meta())?;
        }
        self.buf.clear();
        let seg = self.segments.len() - 1;
        for r in records {
            if let Record::Entry(i, _) = r {
                self.segments[seg].1 = self.segments[seg].1.max(*i);
            }
            encode_record(r, &mut self.buf);
        }
        self.preallocate(self.buf.len() as u64);
        let t = crate::probe::start();
        self.file.write_all_at(&self.buf, self.size)?;
        crate::probe::since(crate::probe::Stage::WalWrite, t);
        self.size += self.buf.len() as u64;
        if sync {
            let t = crate::probe::start();
            self.file.sync_data()?;
            crate::probe::since(crate::probe::Stage::Fsync, t);
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::with_capacity(1 << 16);
        }
        Ok(())
    }

    fn rotate(&mut self, meta: Vec<Record>) -> io::Result<()> {
        // the old segment keeps its records only (its zeros are not needed)
        self.file.set_len(self.size)?;
        self.file.sync_data()?;
        let id = self.segments.last().map_or(1, |s| s.0 + 1);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(segment_path(&self.dir, id))?;
        let mut buf = Vec::new();
        for r in &meta {
            encode_record(r, &mut buf);
        }
        f.write_all(&buf)?;
        f.sync_data()?;
        sync_dir(&self.dir)?;
        self.file = f;
        self.size = buf.len() as u64;
        self.allocated = self.size;
        self.segments.push((id, 0));
        Ok(())
    }

    /// Deletes the oldest segments whose entries are all at or below `purged`
    /// (never the current one).
    pub(super) fn drop_purged(&mut self, purged: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].1 <= purged {
            let (id, _) = self.segments.remove(0);
            std::fs::remove_file(segment_path(&self.dir, id))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Number of segment files.
    #[cfg(test)]
    pub(super) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, r) = Wal::open(dir.path(), PREALLOC).unwrap();
            assert!(r.entries.is_empty());
            w.write(
                &[
                    Record::Vote(vec![1]),
                    Record::Entry(1, vec![10]),
                    Record::Entry(2, vec![20]),
                    Record::Entry(3, vec![30]),
                ],
                true,
                Vec::new,
            )
            .unwrap();
            w.write(
                &[
                    Record::Truncate(3),
                    Record::Entry(3, vec![31]),
                    Record::Purge(1, vec![9]),
                    Record::Committed(vec![2]),
                ],
                true,
                Vec::new,
            )
            .unwrap();
        }
        let (_, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(
            r.entries.into_iter().collect::<Vec<_>>(),
            vec![(2, vec![20]), (3, vec![31])]
        );
        assert_eq!(r.vote, Some(vec![1]));
        assert_eq!(r.purged, Some((1, vec![9])));
        assert_eq!(r.committed, Some(vec![2]));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path(), PREALLOC).unwrap();
            w.write(
                &[
                    Record::Entry(1, vec![1; 100]),
                    Record::Entry(2, vec![2; 100]),
                ],
                true,
                Vec::new,
            )
            .unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut written = Vec::new();
        encode_record(&Record::Entry(1, vec![1; 100]), &mut written);
        encode_record(&Record::Entry(2, vec![2; 100]), &mut written);
        let len = written.len() as u64;
        // a crash in the middle of the second record
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        let (mut w, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), vec![1]);
        w.write(&[Record::Entry(2, vec![3])], true, Vec::new)
            .unwrap();
        drop(w);
        let (_, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(r.entries.get(&2), Some(&vec![3]));
        // a flipped byte in a segment that is not the last
        {
            let (mut w, _) = Wal::open(dir.path(), PREALLOC).unwrap();
            w.rotate(Vec::new()).unwrap();
            w.write(&[Record::Entry(3, vec![3])], true, Vec::new)
                .unwrap();
        }
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        assert!(Wal::open(dir.path(), PREALLOC).is_err());
    }

    #[test]
    fn segments_rotate_keep_meta_and_old_ones_go_once_purged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), PREALLOC).unwrap();
        w.write(
            &[
                Record::Vote(vec![7]),
                Record::Entry(1, vec![1]),
                Record::Entry(2, vec![2]),
            ],
            true,
            Vec::new,
        )
        .unwrap();
        w.rotate(vec![Record::Vote(vec![7])]).unwrap();
        w.write(&[Record::Entry(3, vec![3])], true, Vec::new)
            .unwrap();
        w.drop_purged(1).unwrap();
        assert_eq!(w.segment_count(), 2, "segment 1 still holds entry 2");
        w.write(&[Record::Purge(2, vec![2])], true, Vec::new)
            .unwrap();
        w.drop_purged(2).unwrap();
        assert_eq!(w.segment_count(), 1);
        drop(w);
        let (_, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(
            r.vote,
            Some(vec![7]),
            "the vote survives in the new segment's header"
        );
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn records_go_into_zero_filled_space_and_a_torn_write_there_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 1);
        let records_len;
        {
            let (mut w, _) = Wal::open(dir.path(), PREALLOC).unwrap();
            w.write(&[Record::Entry(1, vec![1; 100])], true, Vec::new)
                .unwrap();
            records_len = w.size;
            // the segment is zero-filled past the record: later syncs
            // change no length
            assert!(std::fs::metadata(&seg).unwrap().len() >= PREALLOC);
            w.write(&[Record::Entry(2, vec![2; 100])], true, Vec::new)
                .unwrap();
            assert!(std::fs::metadata(&seg).unwrap().len() >= PREALLOC);
        }
        let (_, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        // a write torn by a crash: its first sector (the header) never
        // reached the disk, a later one did
        let end = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(end.max(PREALLOC)).unwrap();
        let mut torn = Vec::new();
        encode_record(&Record::Entry(3, vec![3; 600]), &mut torn);
        f.write_all_at(&torn[512..], end + 512).unwrap();
        drop(f);
        let (mut w, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(w.size, 2 * records_len, "the torn bytes are cut off");
        // what is written next replays, and so does everything before it
        w.write(&[Record::Entry(3, vec![4; 10])], true, Vec::new)
            .unwrap();
        w.rotate(Vec::new()).unwrap();
        w.write(&[Record::Entry(4, vec![5; 10])], true, Vec::new)
            .unwrap();
        drop(w);
        let (_, r) = Wal::open(dir.path(), PREALLOC).unwrap();
        assert_eq!(r.entries.get(&3), Some(&vec![4; 10]));
        assert_eq!(
            r.entries.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn random_bytes_never_panic_the_record_decoder() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..64))| {
            let _ = decode_record(&bytes);
        });
    }
}
