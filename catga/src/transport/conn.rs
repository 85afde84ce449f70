//! What both ends of a connection share: the coalescing writer.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame, FrameError};

/// Frames taken from the queue per batch.
const BATCH: usize = 256;
/// Bytes buffered before they are written even if the batch is not done.
const CHUNK: usize = 256 * 1024;
/// A write buffer that grew past this (a large frame) is released after use.
const KEEP: usize = 1024 * 1024;

/// Writes the frames queued in `rx` to `w` until `stop` is cancelled or every
/// sender is gone: takes everything queued, encodes it into one buffer and
/// writes it with one call, so frames queued together share a syscall. A frame
/// that does not encode is handed to `dropped` and skipped.
pub(crate) async fn write_loop(
    mut rx: mpsc::Receiver<Frame>,
    mut w: OwnedWriteHalf,
    max_frame: usize,
    stop: &CancellationToken,
    mut dropped: impl FnMut(Frame, FrameError),
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return Ok(());
        }
        for f in batch.drain(..) {
            if let Err(e) = frame::encode_frame(&f, max_frame, &mut buf) {
                dropped(f, e);
                continue;
            }
            if buf.len() >= CHUNK {
                write(&mut w, &buf, stop).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            write(&mut w, &buf, stop).await?;
            buf.clear();
        }
        if buf.capacity() > KEEP {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

async fn write(
    w: &mut OwnedWriteHalf,
    buf: &[u8],
    stop: &CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(()),
        r = w.write_all(buf) => r,
    }
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
