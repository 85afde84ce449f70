//! openraft's logs, rate-limited. openraft warns once per failed heartbeat
//! (every `heartbeat_interval`, per down peer) and once per failed
//! replication attempt: dozens of WARN lines a second for one peer that is
//! down, which drown everything else. openraft's tasks run under
//! [`QuietRuntime`], tokio with one change: every task it spawns logs
//! through [`Quiet`], a wrapper around the subscriber that was current when
//! the node started, which lets through each WARN or ERROR call site of
//! openraft once per [`WINDOW`] and then says how many it held back.
//! Everything else (other levels, other crates, spans) passes untouched.
//! It also keeps openraft's timeouts no shorter than the node's slowest
//! link needs ([`LinkFloor`]), so heartbeats work on a slow link.
//! (`Dispatch` does not expose the inner subscriber's level hint or
//! `current_span`, so inside openraft's tasks `Span::current()` is unknown
//! and the global level hint is not narrowed by this wrapper; call-site
//! interest, which the filter decides, still is.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::OptionalSend;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::callsite::Identifier;
use tracing::instrument::WithSubscriber;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

type Tokio = openraft::impls::TokioRuntime;

/// How often one openraft call site may log a WARN or ERROR.
const WINDOW: Duration = Duration::from_secs(10);

/// The subscriber wrapper: forwards everything to `inner`, rate-limiting
/// openraft's WARN and ERROR events per call site.
pub(crate) struct Quiet {
    inner: Dispatch,
    seen: Mutex<HashMap<Identifier, Seen>>,
    /// "held back N times" notes, logged by a small task: a subscriber
    /// must not log from inside `event` (the thread's dispatcher is in use).
    notes: tokio::sync::mpsc::UnboundedSender<(String, u64)>,
}

impl Quiet {
    /// A wrapper around `inner`, with the task that logs its notes (it ends
    /// when the wrapper is dropped, with the last of openraft's tasks).
    fn new(inner: Dispatch) -> Quiet {
        let (notes, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
        let task = async move {
            while let Some((site, held)) = rx.recv().await {
                tracing::warn!(
                    target: "catga::raft",
                    held,
                    %site,
                    "openraft logged the message from {site} {held} more times in {WINDOW:?} (shown once per {WINDOW:?})"
                );
            }
        };
        tokio::spawn(task.with_subscriber(inner.clone()));
        Quiet {
            inner,
            seen: Mutex::new(HashMap::new()),
            notes,
        }
    }
}

struct Seen {
    shown: Instant,
    held: u64,
}

impl Quiet {
    /// Whether to show this event now; the number held back since the last
    /// one shown from its call site.
    fn admit(&self, meta: &Metadata<'_>) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        match seen.get_mut(&meta.callsite()) {
            Some(s) if now.duration_since(s.shown) < WINDOW => {
                s.held += 1;
                None
            }
            Some(s) => {
                let held = s.held;
                *s = Seen {
                    shown: now,
                    held: 0,
                };
                Some(held)
            }
            None => {
                seen.insert(
                    meta.callsite(),
                    Seen {
                        shown: now,
                        held: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

impl Subscriber for Quiet {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(meta)
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.inner.enabled(meta)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if *meta.level() <= Level::WARN && meta.target().starts_with("openraft") {
            match self.admit(meta) {
                None => return,
                Some(0) => {}
                Some(held) => {
                    let site = format!(
                        "{}:{}",
                        meta.module_path().unwrap_or(meta.target()),
                        meta.line().unwrap_or(0)
                    );
                    let _ = self.notes.send((site, held));
                }
            }
        }
        self.inner.event(event)
    }
    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
}

tokio::task_local! {
    /// The node whose openraft tasks these are: its [`LinkFloor`].
    static LINK: Arc<LinkFloor>;
}

/// The shortest time openraft's own timeouts give a peer to answer on this
/// node: the slowest link's retransmission timeout (see
/// `network::Deadlines`, which sets it; zero on a fast network).
///
/// Why: openraft bounds each heartbeat by `heartbeat_interval` with the
/// runtime's `timeout`, and its maintainers keep it so (openraft#1853). On a
/// link whose round trip is longer (a 100 ms cross-region link, 50 ms
/// heartbeats) no heartbeat is ever answered in time, so an idle leader's
/// lease (renewed only by answers) lapses after an election timeout and it
/// refuses every write from then on, while its heartbeats, which do reach
/// the followers, keep them from electing another: writes stop for good.
/// Stretching a heartbeat's timeout to the link's lets the answer arrive;
/// the lease stays safe (it counts from when the heartbeat was sent). It
/// never exceeds the election timeout's minimum, so the vote timeout (that
/// minimum) is untouched.
#[derive(Debug, Default)]
pub(crate) struct LinkFloor(AtomicU64);

impl LinkFloor {
    pub(crate) fn set(&self, d: Duration) {
        self.0.store(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

/// Runs `f` (which starts a node's Raft) so that every openraft task it
/// spawns, and every task those spawn, sees `floor`.
pub(crate) async fn with_link_floor<F: Future>(floor: Arc<LinkFloor>, f: F) -> F::Output {
    LINK.scope(floor, f).await
}

/// tokio, as openraft's [`AsyncRuntime`], with openraft's tasks logging
/// through [`Quiet`] and its timeouts never shorter than the node's
/// [`LinkFloor`]. Public only because catga's Raft type configuration
/// names it; nothing outside `raft/` uses it.
#[derive(Debug)]
pub struct QuietRuntime(Tokio);

impl AsyncRuntime for QuietRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // one Quiet per node: tasks spawned by openraft's own tasks keep it
        let current = tracing::dispatcher::get_default(|d| d.clone());
        let quiet = if current.is::<Quiet>() {
            current
        } else {
            Dispatch::new(Quiet::new(current))
        };
        match LINK.try_with(|f| f.clone()) {
            Ok(floor) => Tokio::spawn(LINK.scope(floor, future.with_subscriber(quiet))),
            Err(_) => Tokio::spawn(future.with_subscriber(quiet)),
        }
    }
    fn sleep(d: Duration) -> Self::Sleep {
        Tokio::sleep(d)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + OptionalSend>(d: Duration, f: F) -> Self::Timeout<R, F> {
        let d = LINK.try_with(|floor| d.max(floor.get())).unwrap_or(d);
        Tokio::timeout(d, f)
    }
    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        f: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, f)
    }
    fn is_panic(e: &Self::JoinError) -> bool {
        Tokio::is_panic(e)
    }
    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }
    fn new(threads: usize) -> Self {
        QuietRuntime(Tokio::new(threads))
    }
    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, std::io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Tokio::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl Subscriber for Count {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn peer_down() {
        tracing::warn!(target: "openraft::test", "failed to send a heartbeat");
    }

    #[tokio::test(start_paused = true)]
    async fn openraft_warnings_pass_once_per_window_and_the_rest_are_counted() {
        let seen = Arc::new(AtomicUsize::new(0));
        let quiet = Dispatch::new(Quiet::new(Dispatch::new(Count(seen.clone()))));
        tracing::dispatcher::with_default(&quiet, || (0..100).for_each(|_| peer_down()));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // other levels and other crates pass untouched
        tracing::dispatcher::with_default(&quiet, || {
            tracing::info!(target: "openraft::test", "progress");
            tracing::warn!(target: "catga::test", "something else");
        });
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        tokio::time::advance(WINDOW).await;
        // the next window: the message again, and a note of the 99 held back
        tracing::dispatcher::with_default(&quiet, peer_down);
        for _ in 0..100 {
            if seen.load(Ordering::SeqCst) == 5 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }
}
