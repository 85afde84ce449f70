//! The Redis watch task: a snapshot, then the event stream read with
//! `XREAD BLOCK` on a dedicated connection; resume after reconnecting,
//! snapshot diff when the stream no longer holds what was missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};

use super::redis::Shared;
use super::view::{Backoff, Emitter, LogLimiter, View};
use super::{DiscoveryError, LeaveReason, MemberEvent, NodeInfo};

/// How long one `XREAD` blocks (the connection's response timeout is longer).
const BLOCK: Duration = Duration::from_secs(1);
/// How many entries one `XREAD` returns at most.
const BATCH: usize = 100;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos(u64, u64);

impl Pos {
    fn parse(s: &str) -> Option<Pos> {
        let (ms, seq) = s.split_once('-')?;
        Some(Pos(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The watch loop; ends when the consumer drops the watch.
pub(super) async fn run(
    shared: Arc<Shared>,
    first: (String, Vec<NodeInfo>),
    emitter: Emitter,
    resyncs: Arc<AtomicU64>,
) {
    let mut view = View::new(shared.config.load_change_threshold);
    let mut out = Vec::new();
    let (last, members) = first;
    view.resync(by_id(members), &mut out);
    let mut pos = Pos::parse(&last).unwrap_or(Pos(0, 0));
    if !emitter.emit(&mut out).await {
        return;
    }
    let mut conn: Option<MultiplexedConnection> = None;
    // Set after a reconnect or a batch: check the stream still holds
    // everything after `check_from` before reading on.
    let mut check_from: Option<(Pos, bool)> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut limiter = LogLimiter::new(Duration::from_secs(5));
    loop {
        let step = step(
            &shared,
            &mut conn,
            &mut view,
            &mut pos,
            &mut check_from,
            &resyncs,
            &mut out,
        )
        .await;
        if !emitter.emit(&mut out).await {
            return;
        }
        match step {
            Ok(()) => {
                backoff.reset();
                limiter.reset();
            }
            Err(err) => {
                conn = None;
                check_from.get_or_insert((pos, view.ids().is_empty()));
                let delay = backoff.next_delay();
                if let Some(suppressed) = limiter.allow() {
                    tracing::warn!(url = %shared.url, error = %err,
                        source = ?std::error::Error::source(&err), suppressed, retry_in = ?delay,
                        "discovery: redis watch interrupted");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn by_id(members: Vec<NodeInfo>) -> BTreeMap<u64, NodeInfo> {
    members.into_iter().map(|n| (n.id, n)).collect()
}

/// One round: (re)connect, check for a gap, read one batch.
async fn step(
    shared: &Shared,
    conn: &mut Option<MultiplexedConnection>,
    view: &mut View,
    pos: &mut Pos,
    check_from: &mut Option<(Pos, bool)>,
    resyncs: &AtomicU64,
    out: &mut Vec<MemberEvent>,
) -> Result<(), DiscoveryError> {
    if conn.is_none() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        let fresh = shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| DiscoveryError::store("connect for XREAD", e))?;
        *conn = Some(fresh);
    }
    if let Some((from, was_empty)) = *check_from {
        if !resumable(shared, from, was_empty).await? {
            let (last, members) = shared.snapshot().await?;
            tracing::info!(from = %from, "discovery: stream cannot be resumed; resynchronising from a snapshot");
            view.resync(by_id(members), out);
            *pos = Pos::parse(&last).unwrap_or(Pos(0, 0));
            resyncs.fetch_add(1, Ordering::Relaxed);
        }
        *check_from = None;
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&shared.keys.events)
        .arg(pos.to_string())
        .query_async(c)
        .await
        .map_err(|e| DiscoveryError::store("XREAD", e))?;
    let Some(reply) = reply else {
        return Ok(());
    };
    let before = (*pos, view.ids().is_empty());
    for key in reply.keys {
        for entry in key.ids {
            match Pos::parse(&entry.id) {
                Some(p) if p > *pos => *pos = p,
                _ => {
                    tracing::warn!(id = %entry.id, "discovery: skipping stream entry with a bad id");
                    continue;
                }
            }
            apply(&shared.config.cluster, &entry, view, out);
        }
    }
    // Entries after `before` may have been trimmed before this read.
    *check_from = Some(before);
    Ok(())
}

/// Whether the stream still holds every entry after `from`.
/// `was_empty`: the view was empty when `from` was the position (so from
/// the very start of a stream, nothing can have been missed but by trimming
/// faster than one read, which `MAXLEN ~` with any sane length rules out).
async fn resumable(shared: &Shared, from: Pos, was_empty: bool) -> Result<bool, DiscoveryError> {
    let first: String = shared
        .scripts
        .first_id
        .key(&shared.keys.events)
        .invoke_async(&mut shared.conn.clone())
        .await
        .map_err(|e| DiscoveryError::store("stream state", e))?;
    if first.is_empty() {
        // No stream: the store lost it (or nothing ever happened).
        return Ok(from == Pos(0, 0) && was_empty);
    }
    let Some(first) = Pos::parse(&first) else {
        return Ok(false);
    };
    // Trimming removes the oldest entries: if the first one is at or before
    // `from`, nothing after `from` is gone.
    Ok(first <= from || (from == Pos(0, 0) && was_empty))
}

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name)? {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn field_u64(entry: &StreamId, name: &str) -> Option<u64> {
    std::str::from_utf8(field(entry, name)?).ok()?.parse().ok()
}

/// Applies one stream entry to the view; malformed entries are skipped.
fn apply(cluster: &str, entry: &StreamId, view: &mut View, out: &mut Vec<MemberEvent>) {
    let (Some(kind), Some(id)) = (field(entry, "e"), field_u64(entry, "id")) else {
        tracing::warn!(entry = %entry.id, "discovery: skipping malformed stream entry");
        return;
    };
    match kind {
        b"joined" | b"updated" => {
            let Some(info) =
                field(entry, "info").and_then(|b| NodeInfo::decode(b, cluster, &entry.id))
            else {
                return;
            };
            if info.id != id {
                tracing::warn!(entry = %entry.id, "discovery: skipping entry whose info names another id");
                return;
            }
            view.upsert(info, out);
        }
        b"left" => {
            let reason = match field(entry, "r") {
                Some(b"graceful") => LeaveReason::Graceful,
                _ => LeaveReason::Expired,
            };
            view.remove(id, field_u64(entry, "inc"), reason, out);
        }
        _ => tracing::warn!(entry = %entry.id, "discovery: skipping stream entry of unknown kind"),
    }
}
