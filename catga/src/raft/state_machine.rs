//! The openraft state machine adapter around [`Machine`]: applies entries
//! (on the apply stack or thread, `raft/applier.rs`), keeps snapshots on disk, and
//! hands each entry's events, in log order, to the event log
//! (`raft/events.rs`) without ever waiting for their handlers.
//!
//! An entry that crashed this node twice (a poison pill) is not run again:
//! the apply loop stops before it and waits for the cluster's decision, a
//! later entry in the log (`raft/poison.rs`).
//!
//! An entry this program cannot apply (a message of a newer version) is
//! never skipped: the apply loop stops before it, says why (`raft/stall.rs`)
//! and waits for shutdown, so nothing after it is applied either. openraft
//! keeps replicating the log to this node, and once it is restarted with a
//! program that knows the message, it applies from that entry on.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, Snapshot};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::applier::{Applier, Marker};
use super::events::EventLog;
use super::log_store::LogStore;
use super::poison::Poison;
use super::snapshot_file::{self, SnapFile};
use super::stall::Stall;
use super::{LogId, TC};
use crate::machine::{Applied, Machine, Quarantine};

/// Most entries applied as one batch (those already read).
const APPLY_BATCH: usize = 512;

pub(crate) type Meta = SnapshotMetaOf<TC>;
type Membership = StoredMembershipOf<TC>;

/// The machine with the Raft bookkeeping that must change with it atomically.
pub(crate) struct Inner {
    pub machine: Machine,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

pub(crate) struct Shared {
    pub inner: RwLock<Inner>,
    current: Mutex<Option<(Meta, SnapFile)>>,
    /// Held while a snapshot file is written and made current (built here,
    /// or installed from the leader): openraft builds in a task of its own,
    /// which may run while a leader's snapshot is installed. Both write
    /// the same temporary file and rename it over the same name; without
    /// this, one renamed the other's file away (the install then failed
    /// with ENOENT and stopped the node), or an older build could replace
    /// a newer installed snapshot on disk.
    files: Mutex<()>,
    pub(crate) dir: PathBuf,
    /// A received snapshot's machine, restored while checking it (see
    /// `service.rs`), so installing it does not decode it again.
    pub(crate) prepared: Mutex<Option<(Option<LogId>, Machine)>>,
    /// Applied events waiting for this node's handlers.
    pub events: Arc<EventLog>,
    /// Highest log index applied (for waiters).
    pub applied: watch::Sender<u64>,
    /// Why this node cannot go on applying, if it cannot.
    pub stall: Stall,
    /// Set when the node shuts down: a stalled apply loop returns.
    halt: watch::Sender<bool>,
    applier: Applier,
    pub(crate) marker: Marker,
    /// The entry this node stops before, if it crashed in it (`raft/poison.rs`).
    pub(crate) poison: Poison,
    /// The log, where a stalled apply loop looks for a quarantine decision.
    pub(crate) log: LogStore,
    /// Handler panics applied on this node (for metrics).
    pub(crate) panics: std::sync::atomic::AtomicU64,
    /// When the last batch's answers left (only while probing, see
    /// `crate::probe`): the leader's write measures the way back from it.
    pub(crate) answered_at: Mutex<Option<std::time::Instant>>,
}

/// What openraft holds; cheap to clone.
#[derive(Clone)]
pub(crate) struct SmStore {
    pub shared: Arc<Shared>,
}

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

impl SmStore {
    /// Opens the state machine, restoring the snapshot in `dir` if any.
    pub(crate) fn open(dir: PathBuf, events: Arc<EventLog>, log: LogStore) -> io::Result<SmStore> {
        let mut machine = Machine::new().map_err(other)?;
        let mut last_applied = None;
        let mut membership = Membership::default();
        let mut current = None;
        if let Some(l) = snapshot_file::open(&dir)? {
            machine = l.machine;
            last_applied = l.meta.last_log_id;
            membership = l.meta.last_membership.clone();
            events.restore(l.events);
            current = Some((l.meta, l.file));
        }
        // a transfer cut short by the previous run
        let _ = std::fs::remove_file(dir.join(snapshot_file::INCOMING));
        let idx = last_applied.map(|l| l.index).unwrap_or(0);
        let (marker, previous) = Marker::open(&dir)?;
        // a decision already in the log settles the entry: no stall
        let previous = previous.filter(|p| log.decision_for(p.index).is_none());
        let poison = Poison::open(previous, idx, &marker);
        if let Some(stop) = poison.stop() {
            // openraft replays the committed log before the node runs:
            // start below the entry, so that replay does not wait for it
            log.start_committed_below(stop.index);
        }
        Ok(SmStore {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner {
                    machine,
                    last_applied,
                    membership,
                }),
                current: Mutex::new(current),
                files: Mutex::new(()),
                dir,
                prepared: Mutex::new(None),
                events,
                applied: watch::Sender::new(idx),
                stall: Stall::default(),
                halt: watch::Sender::new(false),
                applier: Applier::start()?,
                marker,
                poison,
                log,
                panics: Default::default(),
                answered_at: Mutex::new(None),
            }),
        })
    }

    /// Shutdown, first step: a stalled apply loop gives up waiting (so that
    /// openraft can stop).
    pub(crate) fn halt(&self) {
        self.shared.halt.send_replace(true);
    }

    /// Shutdown, last step: the apply thread ends.
    pub(crate) fn stop_applier(&self) {
        self.shared.applier.stop();
    }
}

impl SmStore {
    /// Waits until the log holds a committed decision quarantining
    /// `index`, or the node shuts down (an error, as openraft expects).
    async fn wait_for_decision(&self, index: u64, name: &str) -> io::Result<()> {
        let mut committed = self.shared.log.watch_committed();
        let mut halt = self.shared.halt.subscribe();
        loop {
            if self.shared.log.decision_for(index).is_some() {
                return Ok(());
            }
            tokio::select! {
                r = committed.changed() => {
                    if r.is_err() {
                        return Err(io::Error::other("the log is closed"));
                    }
                }
                _ = halt.wait_for(|h| *h) => {
                    return Err(io::Error::other(format!(
                        "shut down while stopped before log entry {index} (`{name}`), a poison pill"
                    )));
                }
            }
        }
    }
}

impl RaftSnapshotBuilder<TC> for SmStore {
    type SnapshotData = SnapFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TC, SnapFile>, io::Error> {
        let shared = self.shared.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || {
            let _files = shared.files.lock();
            // The state is encoded straight into the file, in a forked copy
            // of this process (writers wait only for the fork), else here
            // under the read lock (writers wait for the whole encoding).
            for in_child in [cfg!(target_os = "linux"), false] {
                let g = shared.inner.read();
                let meta = Meta {
                    last_log_id: g.last_applied,
                    last_membership: g.membership.clone(),
                };
                // Events of entries inside the snapshot that have not run
                // here yet are saved with it (after a restart only the log
                // after the snapshot is applied again); the snapshot never
                // waits for them. Taken under the same lock as the state:
                // apply queues an entry's events before it releases it.
                let upto = g.last_applied.map(|l| l.index).unwrap_or(0);
                let events = shared.events.pending_upto(upto);
                let written =
                    snapshot_file::write(&shared.dir, &meta, &events, in_child, g, |g, w| {
                        g.machine.snapshot_to(w)
                    })?;
                if let Some(file) = written {
                    *shared.current.lock() = Some((meta.clone(), file.clone()));
                    return Ok::<_, io::Error>((meta, file));
                }
            }
            Err(io::Error::other("writing the snapshot failed"))
        })
        .await
        .map_err(other)??;
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TC> for SmStore {
    type SnapshotData = SnapFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let g = self.shared.inner.read();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TC>, io::Error>> + Unpin + OptionalSend,
    {
        let mut chunks = entries.ready_chunks(APPLY_BATCH);
        while let Some(chunk) = chunks.next().await {
            let mut items = chunk.into_iter().collect::<Result<Vec<_>, io::Error>>()?;
            loop {
                let shared = self.shared.clone();
                let queued = crate::probe::start();
                let batch = self
                    .shared
                    .applier
                    .run(move || {
                        crate::probe::since(crate::probe::Stage::ApplyQueue, queued);
                        let t = crate::probe::start();
                        let b = apply_batch(&shared, items);
                        crate::probe::since(crate::probe::Stage::ApplyBatch, t);
                        b
                    })
                    .await?;
                if crate::probe::on() {
                    *self.shared.answered_at.lock() = Some(std::time::Instant::now());
                }
                let mut last = None;
                for (index, applied, responder) in batch.done {
                    last = Some(index);
                    if let Some(r) = responder {
                        r.send(applied);
                    }
                }
                if let Some(i) = last {
                    self.shared.applied.send_replace(i);
                }
                let Some(stop) = batch.stalled else { break };
                if stop.poisoned {
                    // Before a poison pill: wait for the decision naming
                    // it (committed after it in the log), then go on with
                    // the same entries; Raft goes on meanwhile.
                    self.wait_for_decision(stop.index, &stop.name).await?;
                    items = stop.rest;
                    continue;
                }
                self.shared.stall.cannot_apply(stop.index, &stop.name);
                // Not applied, not answered: the callers' requests stay
                // pending (and time out) rather than failing as if refused.
                let _unapplied = stop.rest;
                let mut halt = self.shared.halt.subscribe();
                let _ = halt.wait_for(|h| *h).await;
                return Err(io::Error::other(format!(
                    "shut down while stopped before log entry {} (`{}`)",
                    stop.index, stop.name
                )));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: SnapFile) -> Result<(), io::Error> {
        // The service restored (and so checked) it already; otherwise it is
        // decoded into a scratch machine first (on a big stack: user states
        // may nest deeply), so a bad snapshot changes nothing.
        let prepared = self
            .shared
            .prepared
            .lock()
            .take()
            .filter(|(id, _)| *id == meta.last_log_id)
            .map(|(_, m)| m);
        let restored = match prepared {
            Some(m) => m,
            None => {
                let snap = snapshot.clone();
                crate::codec::on_big_stack(move || snap.restore())
                    .await?
                    .map_err(other)?
            }
        };
        // this node's own undelivered events up to the snapshot stay pending
        let idx = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let events = self.shared.events.pending_upto(idx);
        // on disk before the state changes: a crash in between restarts
        // from the new snapshot, never from a state no file describes
        let shared = self.shared.clone();
        let m2 = meta.clone();
        tokio::task::spawn_blocking(move || {
            // the file, the state and `current` change together: a build
            // waiting for the lock then sees the installed state
            let _files = shared.files.lock();
            let file = snapshot_file::write_copy(&shared.dir, &snapshot, &m2, &events)?;
            let _ = std::fs::remove_file(shared.dir.join(snapshot_file::INCOMING));
            {
                let mut g = shared.inner.write();
                g.machine = restored;
                g.last_applied = m2.last_log_id;
                g.membership = m2.last_membership.clone();
            }
            *shared.current.lock() = Some((m2, file));
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(other)??;
        self.shared.applied.send_replace(idx);
        self.shared.stall.snapshot_restored();
        // the leader's state covers the entry this node stopped before
        self.shared.poison.applied(idx);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TC, SnapFile>>, io::Error> {
        Ok(self.shared.current.lock().as_ref().map(|(m, d)| Snapshot {
            meta: m.clone(),
            snapshot: d.clone(),
        }))
    }
}

/// What applying a batch did.
struct Batch {
    /// Applied entries, in log order, with their callers' responders.
    done: Vec<(u64, Applied, Option<ApplyResponder>)>,
    /// Set when it stopped before an entry this program cannot apply.
    stalled: Option<Stalled>,
}

struct Stalled {
    index: u64,
    name: String,
    /// Stopped before a poison pill (`raft/poison.rs`), not a message this
    /// program lacks.
    poisoned: bool,
    /// That entry and the ones after it in the batch: not applied.
    rest: Vec<EntryResponder<TC>>,
}

type ApplyResponder = openraft::storage::ApplyResponder<TC>;

/// Applies a batch in log order, on a large stack (`raft/applier.rs`).
fn apply_batch(shared: &Shared, items: Vec<EntryResponder<TC>>) -> Batch {
    let mut done = Vec::with_capacity(items.len());
    let mut stalled = None;
    let mut marked = false;
    // quarantine decisions are rare: look them up only when the log has one
    let decisions = shared.log.has_decisions();
    {
        let mut g = shared.inner.write();
        let mut items = items.into_iter();
        while let Some((entry, responder)) = items.next() {
            let index = entry.log_id.index;
            let quarantined = decisions && shared.log.decision_for(index).is_some();
            if let EntryPayload::Normal(env) = &entry.payload
                && !quarantined
                && (shared.poison.stops_before(index) || !g.machine.can_apply(env))
            {
                let name = env.name.clone();
                let poisoned = shared.poison.stops_before(index);
                let mut rest = vec![(entry, responder)];
                rest.extend(items);
                stalled = Some(Stalled {
                    index,
                    name,
                    poisoned,
                    rest,
                });
                break;
            }
            g.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => {
                    g.machine.skip(index);
                    None
                }
                EntryPayload::Normal(env) if quarantined => {
                    tracing::warn!(
                        index,
                        message = %env.name,
                        "log entry {index} (`{}`) is quarantined: applied as `Poisoned`, its \
                         handler not run",
                        env.name
                    );
                    shared.poison.applied(index);
                    Some(g.machine.poison(index, &env))
                }
                EntryPayload::Normal(env) => match Quarantine::of(&env) {
                    Some(q) => {
                        // the decision itself changes nothing: the entry it
                        // names was applied as quarantined before it
                        if !g.machine.was_quarantined(q.index) {
                            tracing::error!(
                                index,
                                named = q.index,
                                "a quarantine decision names log entry {}, which this node had \
                                 applied by running it: this replica may differ from the others",
                                q.index
                            );
                        }
                        g.machine.skip(index);
                        None
                    }
                    None => {
                        // best effort: a data dir that cannot take this write
                        // fails the log's next write anyway
                        let died = shared.poison.died_in(index);
                        let _ = shared.marker.applying(index, &env.name, died);
                        marked = true;
                        let a = g.machine.apply(index, &env);
                        if died > 0 {
                            shared.poison.applied(index);
                        }
                        if let Err(crate::error::ApplyError::Panicked { .. }) = &a.response {
                            shared
                                .panics
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // under the same lock as the apply, so a snapshot and
                        // the event log agree; never waits for the handlers
                        shared.events.push(index, a.events.clone());
                        Some(a)
                    }
                },
                EntryPayload::Membership(m) => {
                    g.membership = Membership::new(Some(entry.log_id), m);
                    g.machine.skip(index);
                    None
                }
            };
            let applied = applied.unwrap_or(Applied {
                response: Ok(Vec::new()),
                events: Vec::new(),
                index,
            });
            done.push((index, applied, responder));
        }
    }
    // a node that stops before an entry keeps saying so in the marker
    if !shared.poison.keep_marker(&shared.marker) && marked {
        let _ = shared.marker.idle();
    }
    Batch { done, stalled }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    fn open_store(dir: &std::path::Path) -> SmStore {
        let events = EventLog::open(dir).unwrap();
        let log = LogStore::open(dir, 1 << 20).unwrap();
        SmStore::open(dir.to_path_buf(), events, log).unwrap()
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    /// openraft builds snapshots in a task of its own, so a build may run
    /// while a leader's snapshot is installed: both succeed, and the
    /// installed (newer) one is what stays, in memory and on disk. (Seen
    /// failing in the fault test before the two were serialized: the
    /// install's rename found its file renamed away, ENOENT, and the node
    /// stopped.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_during_an_install_leaves_the_installed_snapshot() {
        let src_dir = tempfile::tempdir().unwrap();
        let mut src = open_store(src_dir.path());
        src.shared.inner.write().last_applied = Some(log_id(500));
        let newer = src.build_snapshot().await.unwrap();
        for round in 1..=60u64 {
            let dir = tempfile::tempdir().unwrap();
            let sm = open_store(dir.path());
            sm.shared.inner.write().last_applied = Some(log_id(round));
            let (mut a, mut b) = (sm.clone(), sm.clone());
            let build = tokio::spawn(async move { a.build_snapshot().await.map(|s| s.meta) });
            let (meta, file) = (newer.meta.clone(), newer.snapshot.clone());
            let install = tokio::spawn(async move { b.install_snapshot(&meta, file).await });
            let built = build.await.unwrap().expect("the build succeeds");
            install.await.unwrap().expect("the install succeeds");
            // a build that ran first saw the old state; one that ran after, the new
            assert!([Some(log_id(round)), Some(log_id(500))].contains(&built.last_log_id));
            let current = sm
                .shared
                .current
                .lock()
                .as_ref()
                .map(|(m, _)| m.last_log_id);
            assert_eq!(current, Some(Some(log_id(500))), "round {round}: in memory");
            let on_disk = snapshot_file::open(dir.path())
                .unwrap()
                .map(|l| l.meta.last_log_id);
            assert_eq!(on_disk, Some(Some(log_id(500))), "round {round}: on disk");
            sm.stop_applier();
        }
    }
}
