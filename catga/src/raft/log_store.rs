//! The durable Raft log: a write-ahead log on disk ([`super::wal`]), with
//! every live entry mirrored in memory so that replication and apply read
//! without touching the disk.
//!
//! Writes go through one writer thread in call order (openraft requires
//! vote, append, truncate and purge to take effect in the order they were
//! called). The writer drains everything queued, writes it with one call and
//! syncs once — one `fdatasync` for many appends (group commit) — and only
//! then tells openraft the entries are durable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::wal::{Record, Wal};
use super::{Entry, LogId, TC, Vote};
use crate::codec::{INTERNAL_DEPTH, decode, encode};

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Quarantine decisions in the log (`raft/poison.rs`): the index of
    /// the decision → the index it names. Rare: usually empty.
    decisions: BTreeMap<u64, u64>,
}

impl Cache {
    fn insert(&mut self, index: u64, e: Entry) {
        if let openraft::EntryPayload::Normal(env) = &e.payload
            && let Some(q) = crate::machine::Quarantine::of(env)
        {
            self.decisions.insert(index, q.index);
        }
        self.entries.insert(index, e);
    }
}

enum Op {
    /// Entries, who to tell once durable, when queued (if probing).
    Append(
        Vec<(u64, Vec<u8>)>,
        IOFlushed<TC>,
        Option<std::time::Instant>,
    ),
    Vote(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Committed(Vec<u8>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Stop,
}

/// The log store handed to openraft (and its reader: the same type).
#[derive(Clone)]
pub(crate) struct LogStore {
    cache: Arc<Mutex<Cache>>,
    writer: std_mpsc::Sender<Op>,
    // keeps the writer thread's handle for shutdown
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The committed index, for a stalled apply loop to wait on.
    committed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir/log` and loads it.
    /// `reserve`: bytes zero-filled ahead of the writes (`Wal::open`).
    pub(super) fn open(dir: &Path, reserve: u64) -> io::Result<LogStore> {
        let (wal, replayed) = Wal::open(&dir.join("log"), reserve)?;
        let mut cache = Cache::default();
        let mut meta = WriterMeta::default();
        if let Some(v) = replayed.vote {
            cache.vote = Some(decode(&v, INTERNAL_DEPTH).map_err(other)?);
            meta.vote = Some(v);
        }
        if let Some((upto, id)) = replayed.purged {
            cache.last_purged = Some(decode(&id, INTERNAL_DEPTH).map_err(other)?);
            meta.purged = Some((upto, id));
        }
        if let Some(c) = replayed.committed {
            cache.committed = Some(decode(&c, INTERNAL_DEPTH).map_err(other)?);
            meta.committed = Some(c);
        }
        for (i, bytes) in replayed.entries {
            let entry: Entry = decode(&bytes, INTERNAL_DEPTH).map_err(other)?;
            cache.insert(i, entry);
        }
        let committed = cache.committed.map(|c| c.index).unwrap_or(0);
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("catga-log-writer".into())
            .spawn(move || writer_loop(wal, meta, rx))?;
        Ok(LogStore {
            cache: Arc::new(Mutex::new(cache)),
            writer: tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            committed: Arc::new(tokio::sync::watch::Sender::new(committed)),
        })
    }

    /// The index of a committed quarantine decision naming entry `index`,
    /// if this log holds one (`raft/poison.rs`).
    pub(super) fn decision_for(&self, index: u64) -> Option<u64> {
        let c = self.cache.lock();
        let committed = c.committed.map(|l| l.index).filter(|c| *c > index)?;
        c.decisions
            .range(index + 1..=committed)
            .find(|(_, named)| **named == index)
            .map(|(at, _)| *at)
    }

    /// Whether this log holds any quarantine decision (cheap).
    pub(super) fn has_decisions(&self) -> bool {
        !self.cache.lock().decisions.is_empty()
    }

    /// The committed index, watched (changes as openraft saves it).
    pub(super) fn watch_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Before Raft starts: lowers the committed index this run starts from
    /// to below `index`, in memory only, so that openraft's replay at start
    /// stops before an entry this node will not run (`raft/poison.rs`);
    /// the leader tells it the real one. Knowing less is committed is
    /// always safe.
    pub(super) fn start_committed_below(&self, index: u64) {
        let mut c = self.cache.lock();
        if c.committed.is_none_or(|l| l.index < index) {
            return;
        }
        let below = index.checked_sub(1).and_then(|i| {
            c.entries
                .get(&i)
                .map(|e| e.log_id)
                .or(c.last_purged.filter(|p| p.index == i))
        });
        c.committed = below;
    }

    /// Stops the writer thread after it has written everything queued.
    pub(super) fn close(&self) {
        let _ = self.writer.send(Op::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.writer
            .send(op)
            .map_err(|_| io::Error::other("the log writer has stopped"))
    }
}

/// The latest vote, purge point and commit point, re-written at the head of
/// every new segment.
#[derive(Default)]
struct WriterMeta {
    vote: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    committed: Option<Vec<u8>>,
}

impl WriterMeta {
    fn records(&self) -> Vec<Record> {
        let mut v = Vec::new();
        if let Some(b) = &self.vote {
            v.push(Record::Vote(b.clone()));
        }
        if let Some((i, b)) = &self.purged {
            v.push(Record::Purge(*i, b.clone()));
        }
        if let Some(b) = &self.committed {
            v.push(Record::Committed(b.clone()));
        }
        v
    }
}

fn writer_loop(mut wal: Wal, mut meta: WriterMeta, rx: std_mpsc::Receiver<Op>) {
    let mut stop = false;
    let mut records = Vec::new();
    // Fail-stop: after a failed write or sync the file's tail is unknown
    // (and a later fsync may report success for lost pages), so nothing
    // more is written; every later operation gets the first error. The node
    // recovers by a restart, which replays the log and cuts a torn tail.
    let mut failed: Option<String> = None;
    while !stop {
        let Ok(first) = rx.recv() else { return };
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        records.clear();
        let mut needs_sync = false;
        let mut purged = None;
        for op in &mut batch {
            match op {
                Op::Append(entries, _, queued) => {
                    crate::probe::since(crate::probe::Stage::WalQueue, *queued);
                    needs_sync = true;
                    for (i, bytes) in entries.drain(..) {
                        records.push(Record::Entry(i, bytes));
                    }
                }
                Op::Vote(v, _) => {
                    needs_sync = true;
                    meta.vote = Some(v.clone());
                    records.push(Record::Vote(v.clone()));
                }
                Op::Committed(c) => {
                    meta.committed = Some(c.clone());
                    records.push(Record::Committed(std::mem::take(c)));
                }
                Op::Truncate(from) => {
                    needs_sync = true;
                    records.push(Record::Truncate(*from));
                }
                Op::Purge(upto, id) => {
                    needs_sync = true;
                    meta.purged = Some((*upto, id.clone()));
                    purged = Some(*upto);
                    records.push(Record::Purge(*upto, std::mem::take(id)));
                }
                Op::Stop => stop = true,
            }
        }
        let mut result = if let Some(e) = &failed {
            Err(io::Error::other(e.clone()))
        } else if records.is_empty() {
            Ok(())
        } else {
            wal.write(&records, needs_sync, || meta.records())
        };
        if let (Ok(()), Some(upto), None) = (&result, purged, &failed) {
            result = wal.drop_purged(upto);
        }
        if let (Err(e), None) = (&result, &failed) {
            // logged once: every later operation fails the same way
            tracing::error!(
                error = %e,
                "writing the raft log failed; this node stops (restart it once the disk is \
                 fixed: it recovers from its data dir)"
            );
            failed = Some(format!("the raft log failed earlier: {e}"));
        }
        for op in batch {
            let res = || {
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::other(e.to_string()))
            };
            match op {
                Op::Append(_, cb, _) => cb.io_completed(res()),
                Op::Vote(_, done) => {
                    let _ = done.send(res());
                }
                _ => {}
            }
        }
    }
}

impl RaftLogReader<TC> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let c = self.cache.lock();
        Ok(c.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.cache.lock().vote)
    }
}

impl RaftLogStorage<TC> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TC>, io::Error> {
        let c = self.cache.lock();
        let last = c
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(c.last_purged);
        Ok(LogState {
            last_purged_log_id: c.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode(vote).map_err(other)?;
        self.cache.lock().vote = Some(*vote);
        let (tx, rx) = oneshot::channel();
        self.send(Op::Vote(bytes, tx))?;
        rx.await
            .map_err(|_| io::Error::other("the log writer has stopped"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced on its own: it rides along with the next durable write.
        // Losing it only means replaying less of the log after a crash until
        // the leader says what is committed. It is written at once, though
        // (into the page cache, which outlives the process): a node that
        // dies applying an entry (`raft/poison.rs`) then replays it at its
        // restart by itself, without waiting for a leader to say it is
        // committed.
        self.cache.lock().committed = committed;
        if let Some(c) = committed {
            self.committed.send_if_modified(|v| {
                let grew = c.index > *v;
                *v = (*v).max(c.index);
                grew
            });
            self.send(Op::Committed(encode(&c).map_err(other)?))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.cache.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TC>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut c = self.cache.lock();
            for e in entries {
                encoded.push((e.index(), encode(&e).map_err(other)?));
                c.insert(e.index(), e);
            }
        }
        self.send(Op::Append(encoded, callback, crate::probe::start()))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        {
            let mut c = self.cache.lock();
            c.entries.split_off(&from);
            c.decisions.split_off(&from);
        }
        self.send(Op::Truncate(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut c = self.cache.lock();
            c.last_purged = Some(log_id);
            let keep = c.entries.split_off(&(log_id.index() + 1));
            c.entries = keep;
        }
        self.send(Op::Purge(log_id.index(), encode(&log_id).map_err(other)?))
    }
}
