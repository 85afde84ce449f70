//! The server: accepts connections, authenticates them, answers requests.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::conn::{SendError, Writer, panic_message, truncate};
use super::frame::{self, Frame, decode_frame};
use super::tls::{self, ReadHalf, Stream};
use super::{Faults, Service, TransportConfig, auth};

/// The longest error message sent back to a caller.
const MAX_ERROR: usize = 16 * 1024;

/// A listening server. It owns its accept task and, through it, every
/// connection task; [`Server::shutdown`] stops them all. Dropping a server
/// without `shutdown` stops them too, without waiting.
pub(crate) struct Server {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Listens on `addr` and answers authenticated peers' requests with `service`.
    pub(crate) async fn bind(
        addr: SocketAddr,
        cfg: Arc<TransportConfig>,
        service: Arc<dyn Service>,
        faults: Faults,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, cfg, service, faults, stop.clone()));
        Ok(Server {
            local_addr,
            stop,
            task,
        })
    }

    /// Like [`Server::bind`], on an already bound std listener.
    pub(crate) fn from_std(
        listener: std::net::TcpListener,
        cfg: Arc<TransportConfig>,
        service: Arc<dyn Service>,
        faults: Faults,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, cfg, service, faults, stop.clone()));
        Ok(Server {
            local_addr,
            stop,
            task,
        })
    }

    /// The address the server listens on (the port chosen, if `bind` got 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (requests being handled are
    /// dropped, unanswered) and waits for all tasks to end.
    pub(crate) async fn shutdown(mut self) {
        self.stop.cancel();
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(error = %e, "transport: the accept task failed");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<TransportConfig>,
    service: Arc<dyn Service>,
    faults: Faults,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "transport: a connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    if conns.len() >= cfg.max_connections {
                        tracing::warn!(%addr, limit = cfg.max_connections,
                            "transport: refused a connection: too many connections");
                        continue;
                    }
                    conns.spawn(serve(
                        stream, addr, cfg.clone(), service.clone(), faults.clone(), stop.child_token(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "transport: accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// One connection: handshake, then read requests and hand each to a task.
async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    cfg: Arc<TransportConfig>,
    service: Arc<dyn Service>,
    faults: Faults,
    stop: CancellationToken,
) {
    super::tune(&stream);
    let until = tokio::time::Instant::now() + cfg.handshake_timeout;
    let stream = match &cfg.tls {
        None => Stream::Plain(stream),
        Some(tls) => {
            let accepted = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = tokio::time::timeout_at(until, tls::accept(tls, stream)) => r,
            };
            match accepted {
                Ok(Ok(s)) => Stream::Server(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::warn!(%addr, reason = %e, "transport: refused a connection: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, timeout = ?cfg.handshake_timeout,
                        "transport: refused a connection: TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let handshake = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        r = tokio::time::timeout_at(until, auth::server(stream, &cfg, &faults)) => r,
    };
    let (from, conn) = match handshake {
        Ok(Ok(ok)) => ok,
        Ok(Err(auth::ServerError::Failed(e))) => {
            tracing::warn!(%addr, reason = %e, "transport: refused a connection: handshake failed");
            return;
        }
        Ok(Err(auth::ServerError::Refused { peer, reason })) => {
            // a refused node retries for as long as it runs: say it once,
            // then at most once a minute
            if cfg
                .identity
                .as_ref()
                .is_none_or(|c| c.log_refusal_now(peer))
            {
                tracing::error!(peer, %addr, %reason,
                    "transport: refused node {peer} (logged at most once a minute)");
            }
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, timeout = ?cfg.handshake_timeout,
                "transport: refused a connection: handshake timed out");
            return;
        }
    };
    tracing::debug!(peer = from, %addr, "transport: connection authenticated");

    let (r, w, session) = tls::split(conn.stream);
    let writer = Writer::new(w, session.clone(), cfg.max_frame_bytes, cfg.write_buffer);
    let r = ReadHalf::new(r, session, &writer);
    let mut reader = FramedRead::new(r, frame::codec(cfg.max_frame_bytes));
    *reader.read_buffer_mut() = conn.read_buf;
    let flusher = {
        let (writer, stop) = (writer.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = writer.flush_loop(&stop).await {
                tracing::debug!(peer = from, error = %e, "transport: write failed");
            }
            stop.cancel();
        })
    };
    let responder = Responder {
        from,
        writer: writer.clone(),
        faults: faults.clone(),
        stop: stop.clone(),
        max_body: cfg.max_body(),
    };

    let mut accepted = false;
    let max_in_flight = cfg.max_in_flight_per_conn.max(1);
    // Requests the service answers quickly (Raft's) run here, on the
    // connection's own task: no hand-off to another task on the way in or
    // out. The rest (the mediator's, which run user handlers) get a task
    // each, so a slow handler never holds up this connection's reading.
    let mut inline = FuturesUnordered::new();
    let mut spawned = JoinSet::new();
    loop {
        while spawned.try_join_next().is_some() {}
        // At the limit we stop reading, and the peer's writes back up
        // (backpressure instead of unbounded work); so we do while the
        // answers wait to be written.
        let room = inline.len() + spawned.len() < max_in_flight;
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some((id, result)) = inline.next(), if !inline.is_empty() => {
                if !responder.answer(id, result) {
                    break;
                }
                continue;
            }
            Some(_) = spawned.join_next(), if !spawned.is_empty() => continue,
            next = reader.next(), if room => next,
        };
        let (id, body) = match next {
            None => {
                tracing::debug!(peer = from, %addr, "transport: peer closed the connection");
                break;
            }
            Some(Err(e)) if super::frame::is_disconnect(&e) => {
                tracing::debug!(peer = from, %addr, error = %e, "transport: connection reset by the peer");
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(peer = from, %addr, error = %e, "transport: closing connection: bad frame");
                break;
            }
            Some(Ok(payload)) => match decode_frame(payload.freeze()) {
                Ok(Frame::Request { id, body }) => {
                    if !accepted {
                        // a peer that sends requests accepted this node
                        accepted = true;
                        if let Some(check) = &cfg.identity {
                            check.accepted_by(from);
                        }
                    }
                    (id, body)
                }
                Ok(Frame::Refused { reason }) if !accepted => {
                    // the client refused this node after proving the
                    // secret (see `auth::client`)
                    if let Some(check) = &cfg.identity {
                        check.refused_by(from, &reason);
                    }
                    break;
                }
                Ok(other) => {
                    tracing::warn!(peer = from, %addr, frame = other.kind(),
                        "transport: closing connection: unexpected frame");
                    break;
                }
                Err(e) => {
                    tracing::warn!(peer = from, %addr, error = %e,
                        "transport: closing connection: malformed frame");
                    break;
                }
            },
        };
        if faults.is_blocked(from) {
            tracing::debug!(
                peer = from,
                "transport: dropping a request: peer cut off (fault injection)"
            );
            break;
        }
        // don't read more while the answers pile up unsent
        writer.ready().await;
        if service.inline(&body) {
            let fut = call(&*service, from, body);
            inline.push(async move { (id, fut.await) });
        } else {
            let fut = call(&*service, from, body);
            let responder = responder.clone();
            spawned.spawn(async move {
                let result = fut.await;
                responder.answer(id, result);
            });
        }
    }
    stop.cancel();
    spawned.shutdown().await;
    writer.close("the connection is closed");
    let _ = flusher.await;
}

/// Sends the answers of one connection.
#[derive(Clone)]
struct Responder {
    from: u64,
    writer: Arc<Writer>,
    faults: Faults,
    stop: CancellationToken,
    max_body: usize,
}

impl Responder {
    /// Sends request `id`'s answer; `false` if the connection is done.
    fn answer(&self, id: u64, result: Result<Bytes, String>) -> bool {
        let max_body = self.max_body;
        let result = match result {
            Ok(b) if b.len() > max_body => Err(format!(
                "the response of {} bytes exceeds the frame limit of {max_body} bytes",
                b.len()
            )),
            Ok(b) => Ok(b),
            Err(e) => Err(truncate(e, MAX_ERROR.min(max_body))),
        };
        if self.faults.is_blocked(self.from) {
            self.stop.cancel();
            return false;
        }
        match self.writer.send(&Frame::Response { id, result }) {
            Ok(()) => true,
            Err(SendError::Frame(e)) => {
                tracing::warn!(peer = self.from, error = %e, "transport: dropped a response");
                true
            }
            Err(SendError::Closed(why)) => {
                tracing::debug!(peer = self.from, %why, "transport: connection closed");
                self.stop.cancel();
                false
            }
        }
    }
}

/// Calls the service; a panic becomes an error for the caller.
fn call(
    service: &dyn Service,
    from: u64,
    body: Bytes,
) -> impl std::future::Future<Output = Result<Bytes, String>> + Send + 'static {
    let fut = std::panic::catch_unwind(AssertUnwindSafe(|| service.call(from, body)));
    async move {
        let fut = match fut {
            Ok(fut) => fut,
            Err(p) => return Err(format!("the handler panicked: {}", panic_message(&*p))),
        };
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(p) => Err(format!("the handler panicked: {}", panic_message(&*p))),
        }
    }
}
