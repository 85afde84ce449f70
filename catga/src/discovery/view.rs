//! What a watcher knows (the member view), how changes and snapshots turn
//! into events exactly once, and the [`MemberWatch`] handed to consumers.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{LeaveReason, MemberEvent, NodeInfo};

/// How many events a watch buffers before its task waits for the consumer
/// (the store keeps what comes meanwhile; Redis resyncs if it was trimmed).
pub(crate) const WATCH_BUFFER: usize = 256;

/// The members a watcher has reported, and the rules that keep its events
/// consistent: no `Joined` for a node already known with the same
/// incarnation, no `Left` for a node not known, `Updated` only when the
/// change is significant.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // used by the store backends
#[derive(Debug)]
pub(crate) struct View {
    members: BTreeMap<u64, NodeInfo>,
    threshold: f64,
}

#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))] // used by the store backends
impl View {
    pub(crate) fn new(threshold: f64) -> Self {
        View {
            members: BTreeMap::new(),
            threshold,
        }
    }

    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS watch
    pub(crate) fn get(&self, id: u64) -> Option<&NodeInfo> {
        self.members.get(&id)
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// `info` is present (a join, an update or a re-registration).
    pub(crate) fn upsert(&mut self, info: NodeInfo, out: &mut Vec<MemberEvent>) {
        match self.members.get(&info.id) {
            Some(known) if known.incarnation == info.incarnation => {
                if known.differs_significantly(&info, self.threshold) {
                    self.members.insert(info.id, info.clone());
                    out.push(MemberEvent::Updated(info));
                }
            }
            Some(known) => {
                // A new life of the node whose old one we never saw leave.
                out.push(MemberEvent::Left {
                    id: known.id,
                    incarnation: known.incarnation,
                    reason: LeaveReason::Expired,
                });
                self.members.insert(info.id, info.clone());
                out.push(MemberEvent::Joined(info));
            }
            None => {
                self.members.insert(info.id, info.clone());
                out.push(MemberEvent::Joined(info));
            }
        }
    }

    /// Node `id` left; `incarnation` (when known) must match the one we know.
    pub(crate) fn remove(
        &mut self,
        id: u64,
        incarnation: Option<u64>,
        reason: LeaveReason,
        out: &mut Vec<MemberEvent>,
    ) {
        let Some(known) = self.members.get(&id) else {
            return;
        };
        if incarnation.is_some_and(|inc| inc != known.incarnation) {
            return;
        }
        let incarnation = known.incarnation;
        self.members.remove(&id);
        out.push(MemberEvent::Left {
            id,
            incarnation,
            reason,
        });
    }

    /// Brings the view to `snapshot`, reporting the differences. Nodes that
    /// vanished are reported `Expired`: the reason is not known any more.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the Redis watch
    pub(crate) fn resync(&mut self, snapshot: BTreeMap<u64, NodeInfo>, out: &mut Vec<MemberEvent>) {
        for id in self.ids() {
            if !snapshot.contains_key(&id) {
                self.remove(id, None, LeaveReason::Expired, out);
            }
        }
        for info in snapshot.into_values() {
            self.upsert(info, out);
        }
    }
}

/// Sends events to the consumer; `false` once it is gone.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    tx: mpsc::Sender<MemberEvent>,
}

impl Emitter {
    /// Whether the consumer dropped its watch (the task should just end).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by the NATS watch
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) async fn emit(&self, events: &mut Vec<MemberEvent>) -> bool {
        for event in events.drain(..) {
            tracing::debug!(?event, "discovery: member event");
            if self.tx.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The events of one watch: the members at the start as `Joined`, then every
/// change. A `futures::Stream`; dropping it stops the task behind it.
#[derive(Debug)]
pub struct MemberWatch {
    rx: mpsc::Receiver<MemberEvent>,
    resyncs: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl MemberWatch {
    /// A watch fed by the task `run` spawns with the given emitter.
    pub(crate) fn spawn<F, Fut>(run: F) -> MemberWatch
    where
        F: FnOnce(Emitter, Arc<AtomicU64>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let resyncs = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(Emitter { tx }, resyncs.clone()));
        MemberWatch {
            rx,
            resyncs,
            task: Some(task),
        }
    }

    /// The next event; `None` only if the backend's task ended.
    pub async fn next(&mut self) -> Option<MemberEvent> {
        self.rx.recv().await
    }

    /// How many times this watch resynchronised from a full snapshot after
    /// it could not resume (a trimmed stream, a store that lost its data, a
    /// recreated NATS watch).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }
}

impl futures::Stream for MemberWatch {
    type Item = MemberEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MemberEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for MemberWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Lets one log line through per period and counts the rest, so that an
/// outage logs a line every few seconds, not one per attempt.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed
    /// since the last one).
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// The trouble is over: the next failure logs at once.
    pub(crate) fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, inc: u64) -> NodeInfo {
        let mut n = NodeInfo::new("c", id, "a");
        n.incarnation = inc;
        n
    }

    #[test]
    fn no_double_joined_or_left() {
        let mut v = View::new(0.1);
        let mut out = Vec::new();
        v.upsert(node(1, 10), &mut out);
        v.upsert(node(1, 10), &mut out);
        v.remove(1, Some(99), LeaveReason::Graceful, &mut out);
        v.remove(1, Some(10), LeaveReason::Graceful, &mut out);
        v.remove(1, Some(10), LeaveReason::Graceful, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0], MemberEvent::Joined(_)));
        assert!(matches!(
            out[1],
            MemberEvent::Left {
                id: 1,
                reason: LeaveReason::Graceful,
                ..
            }
        ));
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_period_and_backoff_doubles_to_a_cap() {
        let mut limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.reset();
        assert_eq!(limiter.allow(), Some(0));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    #[test]
    fn new_incarnation_is_left_then_joined_and_resync_reports_differences() {
        let mut v = View::new(0.1);
        let mut out = Vec::new();
        v.upsert(node(1, 10), &mut out);
        v.upsert(node(2, 20), &mut out);
        out.clear();
        let snapshot = BTreeMap::from([(2, node(2, 21)), (3, node(3, 30))]);
        v.resync(snapshot, &mut out);
        let kinds: Vec<_> = out
            .iter()
            .map(|e| match e {
                MemberEvent::Joined(n) => format!("J{}", n.id),
                MemberEvent::Updated(n) => format!("U{}", n.id),
                MemberEvent::Left { id, .. } => format!("L{id}"),
            })
            .collect();
        assert_eq!(kinds, ["L1", "L2", "J2", "J3"]);
    }
}
