//! Event delivery on this node. Apply never waits for it: each applied
//! entry's events go into [`EventLog`] (memory, plus the snapshot file for
//! those a snapshot covers), and the delivery task runs the local event
//! handlers at its own pace, in log order, recording how far it got in a
//! cursor file in the data dir.
//!
//! At-least-once across restarts: the cursor only moves after a batch's
//! handlers ran (it is written at most every [`CURSOR_EVERY`], so a crash
//! repeats the last few batches). After a restart, the events of entries
//! after the snapshot come back when openraft applies the log again; those
//! of entries inside the snapshot that had not run yet were saved in the
//! snapshot file with it. Batches at or below the cursor are skipped.
//! What is *not* covered: entries this node never applied itself because
//! it installed a snapshot from the leader instead (their events ran on the
//! nodes that applied them, not here).

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::context::{EventContext, PublishedEvent};
use crate::machine::panic_message;
use crate::registry::Registry;

/// Events produced by the entry at an index.
pub(crate) type EventBatch = (u64, Vec<PublishedEvent>);

/// How often, at most, the delivery cursor is written to disk.
const CURSOR_EVERY: Duration = Duration::from_millis(100);
/// The delivery cursor's file in the data dir.
const CURSOR_FILE: &str = "events.cursor";
/// Warn when this many entries' events wait for delivery (then every time
/// the backlog doubles).
const BACKLOG_WARN: usize = 10_000;

/// How the delivery task treats handlers; set on the cluster builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeliverySettings {
    /// A handler running longer is abandoned (dropped at its next await).
    pub(crate) deadline: Option<Duration>,
    /// A handler running longer is reported (WARN, health).
    pub(crate) slow_after: Duration,
}

/// The handler running now, and since when.
#[derive(Debug, Clone)]
struct Busy {
    handler: &'static str,
    event: String,
    index: u64,
    since: Instant,
}

/// What [`EventLog::status`] reports, for health.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventStatus {
    /// Highest index whose events ran on this node (the cursor).
    pub(crate) delivered: u64,
    /// Applied entries whose events wait for delivery here.
    pub(crate) pending: u64,
    /// A handler running for longer than the slow threshold.
    pub(crate) stuck: Option<String>,
}

/// The applied, not yet delivered events of this node, and the cursor.
pub(crate) struct EventLog {
    queue: Mutex<VecDeque<EventBatch>>,
    wake: Notify,
    cursor_path: PathBuf,
    delivered: watch::Sender<u64>,
    busy: Mutex<Option<Busy>>,
    slow_after: Mutex<Duration>,
    backlog_warned: Mutex<usize>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("pending", &self.queue.lock().len())
            .field("delivered", &*self.delivered.borrow())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Opens the log of `dir`: reads the delivery cursor (a missing or
    /// unreadable cursor is 0: everything still known is delivered again).
    pub(crate) fn open(dir: &std::path::Path) -> io::Result<Arc<EventLog>> {
        let cursor_path = dir.join(CURSOR_FILE);
        let cursor = match std::fs::read(&cursor_path) {
            Ok(b) => match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(a) => u64::from_le_bytes(a),
                Err(_) => {
                    tracing::warn!(path = %cursor_path.display(), "event cursor unreadable: events still known are delivered again");
                    0
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Arc::new(EventLog {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            cursor_path,
            delivered: watch::Sender::new(cursor),
            busy: Mutex::new(None),
            slow_after: Mutex::new(Duration::from_secs(5)),
            backlog_warned: Mutex::new(0),
        }))
    }

    /// Queues the events of the entry at `index` (called by apply; never
    /// waits). Entries at or below the cursor ran already (a replay after a
    /// restart) and are skipped.
    pub(crate) fn push(&self, index: u64, events: Vec<PublishedEvent>) {
        if events.is_empty() || index <= *self.delivered.borrow() {
            return;
        }
        let len = {
            let mut q = self.queue.lock();
            q.push_back((index, events));
            q.len()
        };
        self.wake.notify_one();
        if len >= BACKLOG_WARN {
            let mut warned = self.backlog_warned.lock();
            if len >= (*warned).max(BACKLOG_WARN / 2) * 2 {
                *warned = len;
                tracing::warn!(
                    pending = len,
                    "event delivery is behind: {len} applied entries' events wait for their handlers on this node (kept in memory)"
                );
            }
        }
    }

    /// Puts back the batches a snapshot file saved (those above the cursor).
    pub(crate) fn restore(&self, batches: Vec<EventBatch>) {
        let cursor = *self.delivered.borrow();
        let mut q = self.queue.lock();
        for b in batches.into_iter().filter(|(i, _)| *i > cursor) {
            q.push_back(b);
        }
        q.make_contiguous().sort_by_key(|(i, _)| *i);
        drop(q);
        self.wake.notify_one();
    }

    /// The undelivered batches up to `index`, for a snapshot file.
    pub(crate) fn pending_upto(&self, index: u64) -> Vec<EventBatch> {
        self.queue
            .lock()
            .iter()
            .take_while(|(i, _)| *i <= index)
            .cloned()
            .collect()
    }

    /// The cursor and backlog, and a handler stuck for longer than the slow
    /// threshold.
    pub(crate) fn status(&self) -> EventStatus {
        let slow_after = *self.slow_after.lock();
        let stuck = self.busy.lock().as_ref().and_then(|b| {
            let t = b.since.elapsed();
            (t >= slow_after).then(|| {
                format!(
                    "event handler `{}` has been running for {:.1?} on `{}` (entry {})",
                    b.handler, t, b.event, b.index
                )
            })
        });
        EventStatus {
            delivered: *self.delivered.borrow(),
            pending: self.queue.lock().len() as u64,
            stuck,
        }
    }

    fn write_cursor(&self, index: u64) {
        let tmp = self.cursor_path.with_extension("tmp");
        let r = std::fs::write(&tmp, index.to_le_bytes())
            .and_then(|_| std::fs::rename(&tmp, &self.cursor_path));
        if let Err(e) = r {
            // not fatal: a stale cursor only repeats deliveries after a restart
            tracing::warn!(path = %self.cursor_path.display(), error = %e, "could not save the event cursor");
        }
    }
}

/// Delivers queued events until `stop` fires.
pub(crate) async fn event_loop(
    node_id: u64,
    log: Arc<EventLog>,
    settings: DeliverySettings,
    mut stop: watch::Receiver<bool>,
) {
    *log.slow_after.lock() = settings.slow_after;
    let mut written = *log.delivered.borrow();
    let mut last_write = Instant::now();
    loop {
        let next = log.queue.lock().front().cloned();
        let Some((index, events)) = next else {
            *log.backlog_warned.lock() = 0;
            if written != *log.delivered.borrow() {
                written = *log.delivered.borrow();
                log.write_cursor(written);
                last_write = Instant::now();
            }
            tokio::select! {
                _ = log.wake.notified() => continue,
                _ = stop.wait_for(|s| *s) => break,
            }
        };
        if index > *log.delivered.borrow() {
            for ev in &events {
                let ctx = EventContext {
                    node_id,
                    log_index: index,
                };
                if !deliver(&log, ev, index, ctx, &settings, &mut stop).await {
                    break;
                }
            }
            if *stop.borrow() {
                break;
            }
            log.delivered.send_replace(index);
        }
        log.queue.lock().pop_front();
        if last_write.elapsed() >= CURSOR_EVERY {
            written = *log.delivered.borrow();
            log.write_cursor(written);
            last_write = Instant::now();
        }
    }
    // stopping: keep what ran (a batch cut short is not counted)
    let d = *log.delivered.borrow();
    if d != written {
        log.write_cursor(d);
    }
}

/// Runs every local handler of one event; false if `stop` fired meanwhile.
async fn deliver(
    log: &EventLog,
    ev: &PublishedEvent,
    index: u64,
    ctx: EventContext,
    settings: &DeliverySettings,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Ok(reg) = Registry::global() else {
        return true;
    };
    let Some(handlers) = reg.events.get(ev.name.as_str()) else {
        return true;
    };
    for h in handlers {
        let fut = match (h.call)(&ev.payload, ctx.clone()) {
            Ok(fut) => fut,
            Err(e) => {
                tracing::error!(handler = h.handler, event = %ev.name, error = %e, "event handler could not decode the event");
                continue;
            }
        };
        let started = Instant::now();
        *log.busy.lock() = Some(Busy {
            handler: h.handler,
            event: ev.name.clone(),
            index,
            since: started,
        });
        let deadline = settings.deadline.map(|d| started + d);
        let mut warn_at = started + settings.slow_after;
        let mut warn_every = settings.slow_after.max(Duration::from_secs(1));
        let mut fut = std::panic::AssertUnwindSafe(fut).catch_unwind();
        let finished = loop {
            tokio::select! {
                r = &mut fut => {
                    if let Err(p) = r {
                        tracing::error!(handler = h.handler, event = %ev.name, panic = %panic_message(&*p), "event handler panicked");
                    }
                    break true;
                }
                _ = sleep_until_opt(deadline) => {
                    tracing::warn!(
                        handler = h.handler,
                        event = %ev.name,
                        log_index = index,
                        deadline = ?settings.deadline,
                        "event handler abandoned: it passed its deadline (dropped at its await point; work it started elsewhere may go on)"
                    );
                    break true;
                }
                _ = tokio::time::sleep_until(warn_at) => {
                    tracing::warn!(
                        handler = h.handler,
                        event = %ev.name,
                        log_index = index,
                        running_for = ?started.elapsed(),
                        "event handler is slow: event delivery on this node waits for it (writes do not)"
                    );
                    // rate limit: the interval doubles, up to a minute
                    warn_at = Instant::now() + warn_every;
                    warn_every = (warn_every * 2).min(Duration::from_secs(60));
                }
                _ = stop.wait_for(|s| *s) => break false,
            }
        };
        *log.busy.lock() = None;
        if !finished {
            return false;
        }
    }
    true
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Vec<PublishedEvent> {
        vec![PublishedEvent {
            name: "x".into(),
            payload: Vec::new(),
        }]
    }

    #[test]
    fn the_cursor_survives_a_reopen_and_filters_replays() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.push(3, ev());
        log.push(5, ev());
        assert_eq!(log.status().pending, 2);
        assert_eq!(log.pending_upto(4).len(), 1);
        log.delivered.send_replace(3);
        log.write_cursor(3);
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.status().delivered, 3);
        // a replay of entry 3 after a restart is not delivered again
        log.push(3, ev());
        log.restore(vec![(2, ev()), (5, ev())]);
        assert_eq!(
            log.pending_upto(u64::MAX)
                .iter()
                .map(|b| b.0)
                .collect::<Vec<_>>(),
            vec![5]
        );
    }
}
