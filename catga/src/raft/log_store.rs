//! The durable Raft log: redb on disk, with every live entry mirrored in
//! memory so that replication and apply read without touching the disk.
//!
//! Writes go through one writer thread in call order (openraft requires
//! vote, append, truncate and purge to take effect in the order they were
//! called). The writer drains everything queued, writes it in one redb
//! transaction and commits once — one fsync for many appends (group commit) —
//! and only then tells openraft the entries are durable.

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
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{Entry, LogId, TC, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

enum Op {
    Append(Vec<(u64, Vec<u8>)>, IOFlushed<TC>),
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
}

impl LogStore {
    /// Opens (or creates) the log in `dir/raft-log.redb` and loads it.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb")).map_err(other)?;
        let mut cache = Cache::default();
        {
            // make sure the tables exist
            let txn = db.begin_write().map_err(other)?;
            txn.open_table(LOG).map_err(other)?;
            txn.open_table(META).map_err(other)?;
            txn.commit().map_err(other)?;
            let rtxn = db.begin_read().map_err(other)?;
            let meta = rtxn.open_table(META).map_err(other)?;
            if let Some(v) = meta.get(VOTE_KEY).map_err(other)? {
                cache.vote = Some(rmp_serde::from_slice(v.value()).map_err(other)?);
            }
            if let Some(v) = meta.get(PURGED_KEY).map_err(other)? {
                cache.last_purged = Some(rmp_serde::from_slice(v.value()).map_err(other)?);
            }
            if let Some(v) = meta.get(COMMITTED_KEY).map_err(other)? {
                cache.committed = Some(rmp_serde::from_slice(v.value()).map_err(other)?);
            }
            let log = rtxn.open_table(LOG).map_err(other)?;
            for item in log.iter().map_err(other)? {
                let (k, v) = item.map_err(other)?;
                let entry: Entry = rmp_serde::from_slice(v.value()).map_err(other)?;
                cache.entries.insert(k.value(), entry);
            }
        }
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("catga-log-writer".into())
            .spawn(move || writer_loop(db, rx))?;
        Ok(LogStore {
            cache: Arc::new(Mutex::new(cache)),
            writer: tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Stops the writer thread after it has written everything queued.
    pub fn close(&self) {
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

fn writer_loop(db: Database, rx: std_mpsc::Receiver<Op>) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { return };
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let needs_sync = batch.iter().any(|op| {
            matches!(
                op,
                Op::Append(..) | Op::Vote(..) | Op::Truncate(_) | Op::Purge(..)
            )
        });
        let result = write_batch(&db, &batch, needs_sync);
        for op in batch {
            match op {
                Op::Append(_, cb) => cb.io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::other(e.to_string())),
                ),
                Op::Vote(_, done) => {
                    let _ = done.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::other(e.to_string())),
                    );
                }
                Op::Stop => stop = true,
                _ => {}
            }
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the raft log failed");
        }
    }
}

fn write_batch(db: &Database, batch: &[Op], sync: bool) -> io::Result<()> {
    if batch.iter().all(|op| matches!(op, Op::Stop)) {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(other)?;
    txn.set_durability(if sync {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(other)?;
    {
        let mut log = txn.open_table(LOG).map_err(other)?;
        let mut meta = txn.open_table(META).map_err(other)?;
        for op in batch {
            match op {
                Op::Append(entries, _) => {
                    for (i, bytes) in entries {
                        log.insert(*i, bytes.as_slice()).map_err(other)?;
                    }
                }
                Op::Vote(v, _) => {
                    meta.insert(VOTE_KEY, v.as_slice()).map_err(other)?;
                }
                Op::Committed(c) => {
                    meta.insert(COMMITTED_KEY, c.as_slice()).map_err(other)?;
                }
                Op::Truncate(from) => {
                    log.retain_in(*from.., |_, _| false).map_err(other)?;
                }
                Op::Purge(upto, id) => {
                    log.retain_in(..=*upto, |_, _| false).map_err(other)?;
                    meta.insert(PURGED_KEY, id.as_slice()).map_err(other)?;
                }
                Op::Stop => {}
            }
        }
    }
    txn.commit().map_err(other)
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
        let bytes = rmp_serde::to_vec(vote).map_err(other)?;
        self.cache.lock().vote = Some(*vote);
        let (tx, rx) = oneshot::channel();
        self.send(Op::Vote(bytes, tx))?;
        rx.await
            .map_err(|_| io::Error::other("the log writer has stopped"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsync'd on its own: it rides along with the next durable write.
        // Losing it only means replaying less of the log after a crash until
        // the leader says what is committed.
        self.cache.lock().committed = committed;
        if let Some(c) = committed {
            self.send(Op::Committed(rmp_serde::to_vec(&c).map_err(other)?))?;
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
                encoded.push((e.index(), rmp_serde::to_vec(&e).map_err(other)?));
                c.entries.insert(e.index(), e);
            }
        }
        self.send(Op::Append(encoded, callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        self.cache.lock().entries.split_off(&from);
        self.send(Op::Truncate(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut c = self.cache.lock();
            c.last_purged = Some(log_id);
            let keep = c.entries.split_off(&(log_id.index() + 1));
            c.entries = keep;
        }
        self.send(Op::Purge(
            log_id.index(),
            rmp_serde::to_vec(&log_id).map_err(other)?,
        ))
    }
}
