//! Exactly-once application of client requests.
//!
//! Every request carries `(client, seq, ack_below)`: `ack_below` is the
//! lowest sequence number the client still waits for, so every response below
//! it has been received and can be forgotten (the RIFL / Raft-thesis §6.3
//! scheme, which lets one client keep many requests in flight). A client that
//! has been silent for `ttl_ms` of *log time* (the proposers' timestamps,
//! never this node's clock) is forgotten; the decision depends only on the
//! log, so it is the same on every replica.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;

/// The cached outcome of one request.
pub(crate) type Outcome = Result<Vec<u8>, ApplyError>;

/// How many responses one client may have cached before the oldest go.
pub(crate) const MAX_CACHED_PER_CLIENT: usize = 1 << 16;
/// Default: forget a client after a day of log time without requests (a
/// leader whose clock jumps further ahead than this expires every client).
pub(crate) const DEFAULT_CLIENT_TTL_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct ClientRecord {
    last_seen: u64,
    acked_below: u64,
    responses: BTreeMap<u64, Outcome>,
}

/// What to do with a request.
#[derive(Debug, PartialEq)]
pub(crate) enum Check {
    /// Apply it, then [`Dedup::record`] the outcome.
    Apply,
    /// Already applied: answer with this outcome.
    Cached(Outcome),
}

/// The table of clients and their recent responses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Dedup {
    clients: BTreeMap<u64, ClientRecord>,
    /// The largest timestamp seen in the log.
    clock: u64,
    ttl_ms: u64,
    #[serde(skip)]
    by_time: BTreeSet<(u64, u64)>,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(DEFAULT_CLIENT_TTL_MS)
    }
}

impl Dedup {
    pub(crate) fn new(ttl_ms: u64) -> Self {
        Dedup {
            clients: BTreeMap::new(),
            clock: 0,
            ttl_ms,
            by_time: BTreeSet::new(),
        }
    }

    /// Rebuilds the derived index after deserializing.
    pub(crate) fn reindex(&mut self) {
        self.by_time = self
            .clients
            .iter()
            .map(|(id, r)| (r.last_seen, *id))
            .collect();
    }

    /// Number of clients remembered.
    pub(crate) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Checks a request before applying it; advances the log clock and
    /// expires idle clients.
    pub(crate) fn check(&mut self, client: u64, seq: u64, ack_below: u64, time_ms: u64) -> Check {
        if time_ms > self.clock {
            self.clock = time_ms;
            self.expire();
        }
        let rec = self.clients.entry(client).or_default();
        self.by_time.remove(&(rec.last_seen, client));
        rec.last_seen = rec.last_seen.max(time_ms).max(1);
        self.by_time.insert((rec.last_seen, client));
        if ack_below > rec.acked_below {
            rec.acked_below = ack_below;
            let keep = rec.responses.split_off(&ack_below);
            rec.responses = keep;
        }
        if let Some(out) = rec.responses.get(&seq) {
            return Check::Cached(out.clone());
        }
        if seq < rec.acked_below {
            return Check::Cached(Err(ApplyError::Stale { client, seq }));
        }
        Check::Apply
    }

    /// Records the outcome of a request that [`Dedup::check`] let through.
    pub(crate) fn record(&mut self, client: u64, seq: u64, outcome: Outcome) {
        let rec = self.clients.entry(client).or_default();
        rec.responses.insert(seq, outcome);
        while rec.responses.len() > MAX_CACHED_PER_CLIENT {
            if let Some((&oldest, _)) = rec.responses.iter().next() {
                rec.responses.remove(&oldest);
                rec.acked_below = rec.acked_below.max(oldest + 1);
            }
        }
    }

    fn expire(&mut self) {
        if self.ttl_ms == 0 {
            return;
        }
        let horizon = self.clock.saturating_sub(self.ttl_ms);
        while let Some(&(t, id)) = self.by_time.first() {
            if t >= horizon {
                break;
            }
            self.by_time.pop_first();
            self.clients.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_caches() {
        let mut d = Dedup::new(1000);
        assert_eq!(d.check(1, 1, 1, 10), Check::Apply);
        d.record(1, 1, Ok(vec![7]));
        assert_eq!(d.check(1, 1, 1, 11), Check::Cached(Ok(vec![7])));
        // out of order within the window is fine
        assert_eq!(d.check(1, 3, 1, 12), Check::Apply);
        d.record(1, 3, Ok(vec![3]));
        assert_eq!(d.check(1, 2, 1, 12), Check::Apply);
        d.record(1, 2, Ok(vec![2]));
        // acknowledging drops responses, and a replay below is stale
        assert_eq!(d.check(1, 4, 4, 13), Check::Apply);
        assert!(matches!(
            d.check(1, 2, 4, 13),
            Check::Cached(Err(ApplyError::Stale { .. }))
        ));
    }

    #[test]
    fn idle_clients_expire_by_log_time() {
        let mut d = Dedup::new(100);
        assert_eq!(d.check(1, 1, 1, 10), Check::Apply);
        d.record(1, 1, Ok(vec![]));
        assert_eq!(d.check(2, 1, 1, 50), Check::Apply);
        d.record(2, 1, Ok(vec![]));
        assert_eq!(d.clients(), 2);
        assert_eq!(d.check(2, 2, 1, 200), Check::Apply);
        assert_eq!(d.clients(), 1, "client 1 was idle for more than the ttl");
        // the same sequence of checks on a restored copy expires the same way
        let bytes = rmp_serde::to_vec_named(&d).unwrap();
        let mut e: Dedup = rmp_serde::from_slice(&bytes).unwrap();
        e.reindex();
        assert_eq!(e, d);
    }

    #[test]
    fn responses_per_client_are_bounded() {
        let mut d = Dedup::new(0);
        for seq in 0..(MAX_CACHED_PER_CLIENT as u64 + 10) {
            assert_eq!(d.check(9, seq, 0, 1), Check::Apply);
            d.record(9, seq, Ok(vec![]));
        }
        assert_eq!(d.clients[&9].responses.len(), MAX_CACHED_PER_CLIENT);
        assert!(matches!(
            d.check(9, 0, 0, 1),
            Check::Cached(Err(ApplyError::Stale { .. }))
        ));
    }
}
