//! The client side: one multiplexed connection per peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::conn::{SendError, Writer};
use super::frame::{self, Frame, decode_frame};
use super::tls::{self, ReadHalf, Stream};
use super::{Faults, TransportConfig, TransportError, auth};

/// A pool of connections to peers, one per peer, each carrying many requests
/// at once. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<TransportConfig>,
    faults: Faults,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    /// Every connection's reader and writer task.
    tasks: Mutex<JoinSet<()>>,
    /// Cancelled by `shutdown`; each connection's token is a child.
    stop: CancellationToken,
    /// Connections established so far.
    connects: AtomicU64,
}

struct Peer {
    /// The current connection, if any (possibly dead: check before use).
    conn: Mutex<Option<Arc<Conn>>>,
    /// Failures so far and the connect attempt under way, if any.
    connect: Mutex<Connecting>,
}

#[derive(Default)]
struct Connecting {
    failures: u32,
    last_failure: Option<Instant>,
    last_error: String,
    /// The last attempt timed out (no answer at all, not a refusal).
    timed_out: bool,
    /// The attempt under way: callers that come meanwhile wait for it
    /// (each up to its own deadline) instead of starting another.
    attempt: Option<Attempt>,
}

/// A connect attempt running in its own task, on its own time (the connect
/// and handshake timeouts), whatever its callers' deadlines: a caller that
/// gives up does not cut the handshake short, so a peer whose handshake
/// takes longer than one call's deadline is still reached.
struct Attempt {
    addr: String,
    /// When it connects (after the backoff); `None`: at once.
    ready: Option<Instant>,
    done: watch::Receiver<Option<Result<(), TransportError>>>,
}

/// The connect timeout after one that timed out (see `start_attempt`).
const QUICK_CONNECT: Duration = Duration::from_millis(400);
/// While a connect has no answer, another SYN (a new socket) this often,
/// at most [`STAGGERED`] at once: a SYN dropped by a cut link is retried
/// by the kernel only after 1 s, so a link that heals meanwhile is found
/// by the next of ours instead.
const STAGGER: Duration = Duration::from_millis(100);
const STAGGERED: usize = 4;
/// The most a connect waits after one that timed out: the link may heal
/// at any moment, and each try costs a few SYNs.
const QUICK_BACKOFF: Duration = Duration::from_millis(100);

type Reply = oneshot::Sender<Result<Bytes, TransportError>>;

struct Conn {
    peer: u64,
    addr: String,
    writer: Arc<Writer>,
    pending: Mutex<Pending>,
    /// Cancelled when the connection is closed, for whatever reason.
    dead: CancellationToken,
}

struct Pending {
    open: bool,
    next_id: u64,
    calls: HashMap<u64, Reply>,
}

impl Conn {
    fn is_live(&self) -> bool {
        !self.dead.is_cancelled()
    }

    /// A fresh request id and the receiver of its response, or `None` if the
    /// connection is closed.
    fn register(&self) -> Option<(u64, oneshot::Receiver<Result<Bytes, TransportError>>)> {
        let mut p = self.pending.lock();
        if !p.open {
            return None;
        }
        let id = p.next_id;
        p.next_id = p.next_id.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        p.calls.insert(id, tx);
        Some((id, rx))
    }

    fn complete(&self, id: u64, result: Result<Bytes, TransportError>) {
        let reply = self.pending.lock().calls.remove(&id);
        // No entry: the caller gave up (deadline) and removed it.
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Closes the connection and fails every pending call with `err`.
    fn close(&self, err: TransportError) {
        self.dead.cancel();
        self.writer.close(&err.to_string());
        let calls = {
            let mut p = self.pending.lock();
            p.open = false;
            std::mem::take(&mut p.calls)
        };
        for (_, reply) in calls {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// Removes a call's pending entry when the call ends early (deadline,
/// cancellation, lost connection).
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.pending.lock().calls.remove(&self.id);
        }
    }
}

impl Pool {
    /// A pool with no connections yet.
    pub(crate) fn new(cfg: Arc<TransportConfig>, faults: Faults) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                faults,
                peers: Mutex::new(HashMap::new()),
                tasks: Mutex::new(JoinSet::new()),
                stop: CancellationToken::new(),
                connects: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `body` to node `peer` at `addr` and waits for its response until
    /// `deadline`. Connects (or reconnects) first if needed.
    pub(crate) async fn call(
        &self,
        peer: u64,
        addr: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError> {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(TransportError::Closed);
        }
        if inner.faults.is_blocked(peer) {
            return Err(cut_off(peer));
        }
        let max = inner.cfg.max_body();
        if body.len() > max {
            return Err(TransportError::TooLarge {
                size: body.len(),
                max,
            });
        }
        let until = after(deadline);
        match tokio::time::timeout_at(until, self.call_inner(peer, addr, body, until)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout),
        }
    }

    async fn call_inner(
        &self,
        peer: u64,
        addr: &str,
        body: Bytes,
        until: Instant,
    ) -> Result<Bytes, TransportError> {
        if let Some(d) = self.inner.faults.delay_of(peer) {
            tokio::time::sleep(d).await;
        }
        let mut attempts = 0;
        let (conn, id, rx) = loop {
            let conn = self.connection(peer, addr, until).await?;
            if let Some((id, rx)) = conn.register() {
                break (conn, id, rx);
            }
            // It died before we used it: nothing was sent, so another
            // connection may be tried.
            attempts += 1;
            if attempts >= 3 {
                return Err(TransportError::Unreachable(format!(
                    "the connection to node {peer} keeps closing"
                )));
            }
        };
        let mut guard = PendingGuard {
            conn: &conn,
            id,
            armed: true,
        };
        conn.writer.ready().await;
        match conn.writer.send(&Frame::Request { id, body }) {
            Ok(()) => {}
            Err(SendError::Frame(e)) => return Err(TransportError::Unreachable(e.to_string())),
            Err(SendError::Closed(_)) => return Err(lost(peer)),
        }
        let result = rx.await;
        guard.armed = false;
        match result {
            Ok(r) => r,
            Err(_) => Err(lost(peer)),
        }
    }

    /// A live connection to `peer` at `addr`, connecting if needed.
    async fn connection(
        &self,
        peer: u64,
        addr: &str,
        until: Instant,
    ) -> Result<Arc<Conn>, TransportError> {
        let slot = self
            .inner
            .peers
            .lock()
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(Peer {
                    conn: Mutex::new(None),
                    connect: Mutex::new(Connecting::default()),
                })
            })
            .clone();
        // at most twice: an attempt to another (older) address of the peer
        // may be under way; after it, one of our own
        for _ in 0..2 {
            if let Some(c) = live(&slot, addr) {
                return Ok(c);
            }
            if self.inner.stop.is_cancelled() {
                return Err(TransportError::Closed);
            }
            let (mut done, same_addr) = {
                let mut state = slot.connect.lock();
                let (done, same_addr, ready) = match &state.attempt {
                    Some(a) => (a.done.clone(), a.addr == addr, a.ready),
                    None => {
                        let ready = state.last_failure.and_then(|last| {
                            last.checked_add(self.backoff(state.failures, state.timed_out))
                                .filter(|r| *r > Instant::now())
                        });
                        let rx = self.start_attempt(&slot, &mut state, peer, addr, ready)?;
                        (rx, true, ready)
                    }
                };
                if let Some(ready) = ready.filter(|r| *r > until) {
                    // the next attempt comes after our deadline: it is
                    // started (and serves later callers); we fail now
                    let left = ready.saturating_duration_since(Instant::now());
                    return Err(TransportError::Unreachable(format!(
                        "{} (next attempt in {left:?})",
                        state.last_error
                    )));
                }
                (done, same_addr)
            };
            let waited = tokio::time::timeout_at(until, done.wait_for(Option::is_some))
                .await
                .map(|r| r.map(|v| v.clone()));
            let outcome = match waited {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => {
                    // its task ended without an answer (the runtime is
                    // going away): forget it, so it is not waited for again
                    let mut state = slot.connect.lock();
                    if state
                        .attempt
                        .as_ref()
                        .is_some_and(|a| a.done.same_channel(&done))
                    {
                        state.attempt = None;
                    }
                    None
                }
                Err(_) => return Err(TransportError::Timeout),
            };
            match outcome {
                Some(Err(e)) if same_addr => return Err(e),
                _ => {}
            }
        }
        live(&slot, addr).ok_or_else(|| {
            TransportError::Unreachable(format!("the connection to node {peer} keeps closing"))
        })
    }

    /// Starts a connect attempt to `peer` at `addr` (after `ready`, if
    /// set) in a task of its own; `state` is the peer's, locked.
    fn start_attempt(
        &self,
        slot: &Arc<Peer>,
        state: &mut Connecting,
        peer: u64,
        addr: &str,
        ready: Option<Instant>,
    ) -> Result<watch::Receiver<Option<Result<(), TransportError>>>, TransportError> {
        let (tx, rx) = watch::channel(None);
        // after a connect that timed out (packets dropped: a cut link, a
        // host gone), try often and briefly: one SYN per attempt, so that
        // a healed link is found within a few hundred milliseconds instead
        // of at the kernel's next SYN retransmission (1 s, 3 s, ...)
        let quick = state.timed_out;
        let pool = self.clone();
        let slot2 = slot.clone();
        let addr2 = addr.to_owned();
        let stop = self.inner.stop.clone();
        let mut tasks = self.inner.tasks.lock();
        if stop.is_cancelled() {
            return Err(TransportError::Closed);
        }
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let mut silent = false;
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => Err(TransportError::Closed),
                r = async {
                    if let Some(ready) = ready {
                        tokio::time::sleep_until(ready).await;
                    }
                    let cfg = &pool.inner.cfg;
                    let own = after(cfg.connect_timeout.saturating_add(cfg.handshake_timeout));
                    pool.connect(peer, &addr2, own, quick, &mut silent).await
                } => r,
            };
            let outcome = {
                let mut state = slot2.connect.lock();
                state.attempt = None;
                match result {
                    Ok(conn) => {
                        state.failures = 0;
                        state.timed_out = false;
                        state.last_failure = None;
                        state.last_error.clear();
                        let old = slot2.conn.lock().replace(conn);
                        if let Some(old) = old.filter(|o| o.addr != addr2) {
                            // a connection to the peer's previous address
                            old.close(TransportError::Unreachable(format!(
                                "node {peer} moved to {addr2}"
                            )));
                        }
                        Ok(())
                    }
                    Err(e) => {
                        if e != TransportError::Closed {
                            state.timed_out = silent;
                            state.failures = state.failures.saturating_add(1);
                            state.last_failure = Some(Instant::now());
                            // the bare reason: it is wrapped in `Unreachable` again
                            state.last_error = match &e {
                                TransportError::Unreachable(m) => m.clone(),
                                other => other.to_string(),
                            };
                        }
                        Err(e)
                    }
                }
            };
            let _ = tx.send(Some(outcome));
        });
        state.attempt = Some(Attempt {
            addr: addr.to_owned(),
            ready,
            done: rx.clone(),
        });
        Ok(rx)
    }

    /// The wait after `failures` failed connects in a row (`silent`: the
    /// last one had no answer at all).
    fn backoff(&self, failures: u32, silent: bool) -> Duration {
        let cfg = &self.inner.cfg;
        let shift = failures.saturating_sub(1).min(20);
        let d = cfg
            .reconnect_backoff_min
            .saturating_mul(1 << shift)
            .min(cfg.reconnect_backoff_max);
        match silent {
            true => d.min(QUICK_BACKOFF),
            false => d,
        }
    }

    /// Connects, authenticates and starts the connection's tasks.
    async fn connect(
        &self,
        peer: u64,
        addr: &str,
        until: Instant,
        quick: bool,
        silent: &mut bool,
    ) -> Result<Arc<Conn>, TransportError> {
        let cfg = &self.inner.cfg;
        let timeout = match quick {
            true => cfg.connect_timeout.min(QUICK_CONNECT),
            false => cfg.connect_timeout,
        };
        let connect_until = until.min(after(timeout));
        let stream = match tokio::time::timeout_at(connect_until, connect_staggered(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(TransportError::Unreachable(format!(
                    "cannot connect to node {peer} at {addr}: {e}"
                )));
            }
            Err(_) => {
                // no answer at all: packets are dropped on the way
                *silent = true;
                return Err(TransportError::Unreachable(format!(
                    "connecting to node {peer} at {addr} timed out"
                )));
            }
        };
        super::tune(&stream);
        let handshake_until = until.min(after(cfg.handshake_timeout));
        let stream = match &cfg.tls {
            None => Stream::Plain(stream),
            Some(tls) => {
                match tokio::time::timeout_at(handshake_until, tls::connect(tls, peer, stream))
                    .await
                {
                    Ok(Ok(s)) => Stream::Client(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::warn!(peer, %addr, reason = %e, "transport: TLS handshake failed");
                        return Err(TransportError::Handshake(format!(
                            "node {peer} at {addr}: {e}"
                        )));
                    }
                    Err(_) => {
                        tracing::warn!(peer, %addr, "transport: TLS handshake timed out");
                        return Err(TransportError::Handshake(format!(
                            "node {peer} at {addr} did not complete the TLS handshake in time"
                        )));
                    }
                }
            }
        };
        let authed =
            match tokio::time::timeout_at(handshake_until, auth::client(stream, cfg, peer)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    match &e {
                        TransportError::Handshake(_) => {
                            tracing::warn!(peer, %addr, reason = %e, "transport: handshake failed")
                        }
                        // retried for as long as it lasts: once, then once a minute
                        TransportError::Refused(_)
                            if cfg
                                .identity
                                .as_ref()
                                .is_none_or(|c| c.log_refusal_now(peer)) =>
                        {
                            tracing::error!(peer, %addr, reason = %e, "transport: peer refused")
                        }
                        _ => {}
                    }
                    return Err(e);
                }
                Err(_) => {
                    tracing::warn!(peer, %addr, "transport: handshake timed out");
                    return Err(TransportError::Handshake(format!(
                        "node {peer} at {addr} did not complete the handshake in time"
                    )));
                }
            };

        let (r, w, session) = tls::split(authed.stream);
        let writer = Writer::new(w, session.clone(), cfg.max_frame_bytes, cfg.write_buffer);
        let r = ReadHalf::new(r, session, &writer);
        let mut reader = FramedRead::new(r, frame::codec(cfg.max_frame_bytes));
        *reader.read_buffer_mut() = authed.read_buf;
        let conn = Arc::new(Conn {
            peer,
            addr: addr.to_owned(),
            writer,
            pending: Mutex::new(Pending {
                open: true,
                next_id: 1,
                calls: HashMap::new(),
            }),
            dead: self.inner.stop.child_token(),
        });

        let mut tasks = self.inner.tasks.lock();
        if self.inner.stop.is_cancelled() {
            return Err(TransportError::Closed);
        }
        while tasks.try_join_next().is_some() {}
        tasks.spawn(read_loop(
            conn.clone(),
            reader,
            self.inner.faults.clone(),
            self.inner.stop.clone(),
            (cfg.probe_after, cfg.dead_after),
        ));
        let c = conn.clone();
        tasks.spawn(async move {
            if let Err(e) = c.writer.flush_loop(&c.dead).await {
                c.close(TransportError::Unreachable(format!(
                    "writing to node {} failed: {e}",
                    c.peer
                )));
            }
        });
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer, %addr, "transport: connected");
        Ok(conn)
    }

    /// The largest frame this pool sends or takes.
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.inner.cfg.max_frame_bytes
    }

    /// How many connections this pool has established so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Asks the TLS session with `peer` for new keys (a `KeyUpdate` that
    /// requests the peer's too); `false` without a TLS connection.
    #[cfg(test)]
    pub(crate) fn update_tls_keys(&self, peer: u64) -> bool {
        let slot = self.inner.peers.lock().get(&peer).cloned();
        let conn = slot.and_then(|s| s.conn.lock().clone());
        let Some(session) = conn.as_ref().and_then(|c| c.writer.session()) else {
            return false;
        };
        let updated = session.lock().refresh_traffic_keys().is_ok();
        if let Some(c) = conn {
            c.writer.push_tls();
        }
        updated
    }

    /// Calls to `peer` waiting for their response.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, peer: u64) -> usize {
        let slot = self.inner.peers.lock().get(&peer).cloned();
        let conn = slot.and_then(|s| s.conn.lock().clone());
        conn.map_or(0, |c| c.pending.lock().calls.len())
    }

    /// Closes every connection (pending calls fail with `Closed`) and waits
    /// for their tasks. Later calls fail with `Closed`.
    pub(crate) async fn shutdown(&self) {
        self.inner.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::warn!(error = %e, "transport: a connection task failed");
            }
        }
        self.inner.peers.lock().clear();
    }
}

fn live(slot: &Peer, addr: &str) -> Option<Arc<Conn>> {
    match &*slot.conn.lock() {
        Some(c) if c.is_live() && c.addr == addr => Some(c.clone()),
        _ => None,
    }
}

/// Reads responses and completes the calls waiting for them.
///
/// It also notices a connection that went silent: a network cut that drops
/// packets without a reset leaves the socket open, and what is written to
/// it waits in the kernel for retransmissions that back off to many seconds.
/// While calls wait and nothing has been read for `probe_after`, it sends a
/// ping (an empty request, which every catga version answers at once, if
/// only with an error); when still nothing has come after `dead_after`, it
/// closes the connection, failing the calls, and the next call connects
/// afresh, so a healed link carries traffic again as soon as a new
/// connection gets through instead of after the kernel gives up.
async fn read_loop(
    conn: Arc<Conn>,
    mut reader: FramedRead<ReadHalf, LengthDelimitedCodec>,
    faults: Faults,
    stop: CancellationToken,
    (probe_after, dead_after): (Duration, Duration),
) {
    let peer = conn.peer;
    let mut last_read = Instant::now();
    let mut pinged = false;
    let mut watch = tokio::time::interval(probe_after.min(dead_after) / 2);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let err = loop {
        let next = tokio::select! {
            biased;
            _ = conn.dead.cancelled() => break if stop.is_cancelled() {
                TransportError::Closed
            } else {
                lost(peer)
            },
            next = reader.next() => next,
            _ = watch.tick() => {
                let waiting = !conn.pending.lock().calls.is_empty();
                let silent = last_read.elapsed();
                if !waiting {
                    // nothing owed: silence is no sign of anything
                    last_read = Instant::now();
                    pinged = false;
                } else if silent >= dead_after {
                    tracing::warn!(peer, silent = ?silent,
                        "transport: no answer on a connection with calls waiting; closing it \
                         (a silent network cut?) and reconnecting");
                    break TransportError::Unreachable(format!(
                        "node {peer} sent nothing for {silent:?} while calls waited: \
                         the connection is presumed dead"
                    ));
                } else if silent >= probe_after && !pinged {
                    pinged = true;
                    if let Some((id, _answer)) = conn.register() {
                        let ping = Frame::Request { id, body: Bytes::new() };
                        if let Err(SendError::Closed(_)) = conn.writer.send(&ping) {
                            break lost(peer);
                        }
                    }
                }
                continue;
            }
        };
        last_read = Instant::now();
        pinged = false;
        match next {
            None => break lost(peer),
            Some(Err(e)) if super::frame::is_disconnect(&e) => {
                tracing::debug!(peer, error = %e, "transport: connection reset by the peer");
                break TransportError::Unreachable(format!(
                    "the connection to node {peer} was reset: {e}"
                ));
            }
            Some(Err(e)) => {
                tracing::warn!(peer, error = %e, "transport: closing connection: bad frame");
                break TransportError::Unreachable(format!("bad frame from node {peer}: {e}"));
            }
            Some(Ok(payload)) => match decode_frame(payload.freeze()) {
                Ok(Frame::Response { id, result }) => {
                    if faults.is_blocked(peer) {
                        break cut_off(peer);
                    }
                    conn.complete(id, result.map_err(TransportError::Remote));
                }
                Ok(other) => {
                    tracing::warn!(
                        peer,
                        frame = other.kind(),
                        "transport: closing connection: unexpected frame"
                    );
                    break TransportError::Unreachable(format!(
                        "node {peer} sent an unexpected {} frame",
                        other.kind()
                    ));
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, "transport: closing connection: malformed frame");
                    break TransportError::Unreachable(format!(
                        "node {peer} sent a malformed frame: {e}"
                    ));
                }
            },
        }
    };
    conn.close(err);
}

/// `TcpStream::connect`, with another SYN (a new socket) every
/// [`STAGGER`] while none has answered, [`STAGGERED`] at most: the first
/// socket that connects wins, the first refusal is the answer.
async fn connect_staggered(addr: &str) -> std::io::Result<TcpStream> {
    let mut tries = futures::stream::FuturesUnordered::new();
    tries.push(TcpStream::connect(addr));
    let mut next = tokio::time::interval_at(Instant::now() + STAGGER, STAGGER);
    loop {
        tokio::select! {
            Some(r) = tries.next() => return r,
            _ = next.tick(), if tries.len() < STAGGERED => tries.push(TcpStream::connect(addr)),
        }
    }
}

/// Now plus `d`; a time too far to represent is a year from now.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

fn lost(peer: u64) -> TransportError {
    TransportError::Unreachable(format!(
        "the connection to node {peer} was lost before the response came"
    ))
}

fn cut_off(peer: u64) -> TransportError {
    TransportError::Unreachable(format!("node {peer} is cut off (fault injection)"))
}
