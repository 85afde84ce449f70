//! The NATS watch task: a KV watch with history (a replay of the current
//! values, then changes), per-node last-seen times judged against the lease
//! by this process's clock, and a watchdog that re-creates the watch after
//! the client reconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;

use super::nats::{Shared, decode_entry, fresh};
use super::view::{Backoff, Emitter, LogLimiter, View};
use super::{DiscoveryConfig, LeaveReason, MemberEvent};

fn key_id(cluster: &str, key: &str) -> Option<u64> {
    key.strip_prefix(cluster)?.strip_prefix('.')?.parse().ok()
}

/// Per node: the last revision seen and when it was seen (kept a while
/// after the node left, so that a replay of its last revision is ignored).
type Seen = HashMap<u64, (u64, Instant)>;

pub(super) async fn run(shared: Arc<Shared>, emitter: Emitter, resyncs: Arc<AtomicU64>) {
    let config = shared.config.clone();
    let tick_every = (config.lease / 10).max(Duration::from_millis(20));
    let mut view = View::new(config.load_change_threshold);
    let mut seen = Seen::new();
    let mut out = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut limiter = LogLimiter::new(Duration::from_secs(5));
    let mut started = false;
    loop {
        let filter = format!("{}.*", config.cluster);
        let mut watch = match shared.kv.watch_with_history(filter).await {
            Ok(watch) => watch,
            Err(err) => {
                let delay = backoff.next_delay();
                if let Some(suppressed) = limiter.allow() {
                    tracing::warn!(url = %shared.url, error = %err, suppressed, retry_in = ?delay,
                        "discovery: cannot (re)create the NATS watch");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if started {
            resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::info!("discovery: NATS watch re-created; diffing the replay");
        }
        started = true;
        limiter.reset();
        backoff.reset();
        let healthy_since = Instant::now();
        let connects = shared.client.statistics().connects.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(tick_every);
        loop {
            tokio::select! {
                item = watch.next() => match item {
                    Some(Ok(entry)) => apply(&config, &entry, &mut view, &mut seen, &mut out),
                    _ if emitter.is_closed() => return,
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "discovery: NATS watch failed; re-creating it");
                        break;
                    }
                    None => {
                        tracing::warn!("discovery: NATS watch ended; re-creating it");
                        break;
                    }
                },
                _ = tick.tick() => {
                    if shared.client.connection_state() != async_nats::connection::State::Connected {
                        continue; // no heartbeats can arrive: judge nobody meanwhile
                    }
                    let now = shared.client.statistics().connects.load(Ordering::Relaxed);
                    if now != connects {
                        break; // the watchdog: the client reconnected; replay and diff
                    }
                    expire(&config, healthy_since, &mut view, &mut seen, &mut out);
                }
            }
            if !emitter.emit(&mut out).await {
                return;
            }
        }
        if !emitter.emit(&mut out).await {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn apply(
    config: &DiscoveryConfig,
    entry: &kv::Entry,
    view: &mut View,
    seen: &mut Seen,
    out: &mut Vec<MemberEvent>,
) {
    let Some(id) = key_id(&config.cluster, &entry.key) else {
        tracing::warn!(key = %entry.key, "discovery: skipping key that names no node id");
        return;
    };
    match entry.operation {
        kv::Operation::Put => {
            if seen.get(&id).is_some_and(|(rev, _)| entry.revision <= *rev) {
                return; // a replay of what we know: not a new heartbeat
            }
            if view.get(id).is_none() && !fresh(entry, config.lease) {
                return; // a leftover of a node that died
            }
            let Some(info) = decode_entry(&config.cluster, entry) else {
                return;
            };
            seen.insert(id, (entry.revision, Instant::now()));
            view.upsert(info, out);
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if seen.get(&id).is_some_and(|(rev, _)| entry.revision <= *rev) {
                return;
            }
            seen.insert(id, (entry.revision, Instant::now()));
            view.remove(id, None, LeaveReason::Graceful, out);
        }
    }
}

fn expire(
    config: &DiscoveryConfig,
    healthy_since: Instant,
    view: &mut View,
    seen: &mut Seen,
    out: &mut Vec<MemberEvent>,
) {
    let now = Instant::now();
    for id in view.ids() {
        let last = seen
            .get(&id)
            .map_or(healthy_since, |(_, at)| (*at).max(healthy_since));
        if now.duration_since(last) > config.lease {
            // `seen` keeps its revision: a replay of it is not a comeback.
            view.remove(id, None, LeaveReason::Expired, out);
        }
    }
    // Forget the revisions of nodes long gone, so `seen` stays bounded.
    let horizon = config.lease.saturating_mul(10);
    seen.retain(|id, (_, at)| view.get(*id).is_some() || now.duration_since(*at) < horizon);
}
