//! openraft's logs, rate-limited. openraft warns once per failed heartbeat
//! (every `heartbeat_interval`, per down peer) and once per failed
//! replication attempt: dozens of WARN lines a second for one peer that is
//! down, which drown everything else. openraft's tasks run under
//! [`QuietRuntime`], tokio with one change: every task it spawns logs
//! through [`Quiet`], a wrapper around the subscriber that was current when
//! the node started, which lets through each WARN or ERROR call site of
//! openraft once per [`WINDOW`] and then says how many it held back.
//! Everything else (other levels, other crates, spans) passes untouched.
//! (`Dispatch` does not expose the inner subscriber's level hint or
//! `current_span`, so inside openraft's tasks `Span::current()` is unknown
//! and the global level hint is not narrowed by this wrapper; call-site
//! interest, which the filter decides, still is.)

use std::collections::HashMap;
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
                Some(held) => tracing::dispatcher::with_default(&self.inner, || {
                    tracing::warn!(
                        target: "catga::raft",
                        held,
                        site = %format_args!("{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0)),
                        "openraft logged the next message {held} more times in the last {WINDOW:?} (shown once per {WINDOW:?})"
                    )
                }),
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

/// tokio, as openraft's [`AsyncRuntime`], with openraft's tasks logging
/// through [`Quiet`]. Public only because catga's Raft type configuration
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
            Dispatch::new(Quiet {
                inner: current,
                seen: Mutex::new(HashMap::new()),
            })
        };
        Tokio::spawn(future.with_subscriber(quiet))
    }
    fn sleep(d: Duration) -> Self::Sleep {
        Tokio::sleep(d)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + OptionalSend>(d: Duration, f: F) -> Self::Timeout<R, F> {
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
