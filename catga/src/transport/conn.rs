//! What both ends of a connection share: the writer.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame, FrameError};
use super::tls::Session;

/// A write buffer that grew past this (a large frame) is released once empty.
const KEEP: usize = 1024 * 1024;

/// The sending half of a connection, shared by everything that sends on it.
///
/// A sender encodes its frame into the buffer and, when no flush is under
/// way, writes the buffer to the socket itself with a non-blocking write
/// (which nearly always takes it whole): a frame reaches the kernel without
/// a hand-off to another task, which on a busy machine costs tens of
/// microseconds per hop. What the socket does not take at once is left to
/// the connection's flush task ([`Writer::flush_loop`]); frames sent
/// meanwhile are appended and go out with it in one call.
///
/// Senders that find more than `limit` bytes waiting wait in
/// [`Writer::ready`] (backpressure: a peer that does not read slows its
/// senders down instead of growing the buffer without bound).
///
/// With TLS the buffer holds ciphertext: a sender encrypts its frame into
/// it under the same lock (see `tls.rs`), so frames go out whole and in
/// order, through the same non-blocking write.
pub(crate) struct Writer {
    sock: OwnedWriteHalf,
    state: Mutex<State>,
    /// With TLS: the session every frame is encrypted with (locked after
    /// `state`, never before).
    tls: Option<Session>,
    /// Wakes the flush task: the buffer holds bytes the socket did not take.
    pending: Notify,
    /// Wakes senders waiting in `ready`, and the flush task on close.
    drained: Notify,
    limit: usize,
    max_frame: usize,
}

struct State {
    buf: BytesMut,
    /// With TLS: a frame's plaintext, before it is encrypted into `buf`.
    plain: BytesMut,
    /// The flush task owns the buffer's head: senders only append.
    flushing: bool,
    /// Why the connection cannot be written to any more.
    closed: Option<String>,
}

/// Why a frame was not sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The frame does not encode (too large, say); the connection is fine.
    Frame(FrameError),
    /// The connection is closed; the reason.
    Closed(String),
}

impl Writer {
    pub(crate) fn new(
        sock: OwnedWriteHalf,
        tls: Option<Session>,
        max_frame: usize,
        limit: usize,
    ) -> Arc<Writer> {
        Arc::new(Writer {
            sock,
            tls,
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(64 * 1024),
                plain: BytesMut::new(),
                flushing: false,
                closed: None,
            }),
            pending: Notify::new(),
            drained: Notify::new(),
            limit: limit.max(1),
            max_frame,
        })
    }

    fn stream(&self) -> &TcpStream {
        self.sock.as_ref()
    }

    /// Waits until the buffer is below the limit or the connection closed
    /// (then `send` says so).
    pub(crate) async fn ready(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let s = self.state.lock();
                if s.closed.is_some() || s.buf.len() < self.limit {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Queues `frame` and writes what the socket takes now; the flush task
    /// writes the rest.
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), SendError> {
        let mut s = self.state.lock();
        if let Some(why) = &s.closed {
            return Err(SendError::Closed(why.clone()));
        }
        match &self.tls {
            None => {
                frame::encode_frame(frame, self.max_frame, &mut s.buf).map_err(SendError::Frame)?
            }
            Some(tls) => {
                let st = &mut *s;
                st.plain.clear();
                frame::encode_frame(frame, self.max_frame, &mut st.plain)
                    .map_err(SendError::Frame)?;
                if let Err(e) = encrypt(tls, &st.plain, &mut st.buf) {
                    let why = format!("TLS: {e}");
                    self.fail(s, why.clone());
                    return Err(SendError::Closed(why));
                }
                if st.plain.capacity() > KEEP {
                    st.plain = BytesMut::new();
                }
            }
        }
        self.kick(s)
    }

    /// The TLS session, if any.
    #[cfg(test)]
    pub(crate) fn session(&self) -> Option<&Session> {
        self.tls.as_ref()
    }

    /// Sends what the TLS session has to say by itself (a key update, an
    /// alert), found by the reader.
    pub(crate) fn push_tls(&self) {
        let Some(tls) = &self.tls else { return };
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return;
        }
        if let Err(e) = encrypt(tls, &[], &mut s.buf) {
            self.fail(s, format!("TLS: {e}"));
            return;
        }
        let _ = self.kick(s);
    }

    /// Writes what the socket takes now, unless the flush task is at it;
    /// leaves the rest to the flush task.
    fn kick(&self, mut s: parking_lot::MutexGuard<'_, State>) -> Result<(), SendError> {
        if s.flushing {
            return Ok(());
        }
        match self.write_now(&mut s) {
            Ok(true) => Ok(()),
            Ok(false) => {
                s.flushing = true;
                drop(s);
                self.pending.notify_one();
                Ok(())
            }
            Err(e) => {
                let why = format!("write failed: {e}");
                self.fail(s, why.clone());
                Err(SendError::Closed(why))
            }
        }
    }

    /// Writes the buffer without blocking: `true` if it is all out.
    fn write_now(&self, s: &mut State) -> io::Result<bool> {
        while !s.buf.is_empty() {
            match self.stream().try_write(&s.buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => s.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if s.buf.capacity() > KEEP {
            s.buf = BytesMut::with_capacity(64 * 1024);
        }
        Ok(true)
    }

    fn fail(&self, mut s: parking_lot::MutexGuard<'_, State>, why: String) {
        if s.closed.is_none() {
            s.closed = Some(why);
        }
        s.buf.clear();
        drop(s);
        // wakes the reader too: the peer and this end see the connection end
        let _ = socket2::SockRef::from(self.stream()).shutdown(std::net::Shutdown::Both);
        self.drained.notify_waiters();
        self.pending.notify_one();
    }

    /// Closes the connection: later sends fail with `why`, unsent bytes are
    /// dropped, both directions of the socket are shut down.
    pub(crate) fn close(&self, why: &str) {
        let s = self.state.lock();
        self.fail(s, why.to_owned());
    }

    /// Writes what senders left in the buffer, until `stop` is cancelled or
    /// the connection is closed; an error closes it.
    pub(crate) async fn flush_loop(&self, stop: &CancellationToken) -> io::Result<()> {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = self.pending.notified() => {}
            }
            loop {
                if self.state.lock().closed.is_some() {
                    return Ok(());
                }
                let writable = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    r = self.stream().writable() => r,
                };
                let mut s = self.state.lock();
                let done = match writable.and_then(|()| self.write_now(&mut s)) {
                    Ok(done) => done,
                    Err(e) => {
                        self.fail(s, format!("write failed: {e}"));
                        return Err(e);
                    }
                };
                if done {
                    s.flushing = false;
                }
                let below = s.buf.len() < self.limit;
                drop(s);
                if below {
                    self.drained.notify_waiters();
                }
                if done {
                    break;
                }
            }
        }
    }
}

/// Encrypts `plain` (possibly nothing) and moves everything the session
/// has to send into `out`.
fn encrypt(tls: &Session, plain: &[u8], out: &mut BytesMut) -> io::Result<()> {
    use std::io::Write;
    let mut t = tls.lock();
    if !plain.is_empty() {
        t.writer().write_all(plain)?;
    }
    let mut w = out.writer();
    while t.wants_write() {
        t.write_tls(&mut w)?;
    }
    Ok(())
}

/// A panic payload as text.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
