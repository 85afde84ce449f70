//! Where a write spends its time, stage by stage, for benchmarks: a
//! regression then points at its stage instead of at "the write path".
//!
//! Off by default: every probe point is one relaxed atomic load. Turned on
//! (by `catga::testing::stages`, which `examples/bench --stages` uses), each
//! point adds its duration to a fixed histogram (atomic counters, no lock,
//! no allocation). The histograms are process-wide: in a benchmark that
//! runs three nodes in one process, the storage and apply stages count the
//! work of every node, which is what the machine pays for.
//!
//! A leaf: it imports nothing of catga.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The stages of a write, in the order a write meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Stage {
    /// `send` to the proposal on the leader (slot, sequence number, route,
    /// capability check), in-process leader only.
    Admit,
    /// Encoding the message (rmp-serde) in `send`.
    Encode,
    /// openraft's `client_write` on the leader, from the call to the answer
    /// (commit wait: log write, replication, apply, the answer's way back).
    Commit,
    /// An append reaching the log writer thread (queue wait), per append.
    WalQueue,
    /// The log writer's `write` call, per batch of appends.
    WalWrite,
    /// The log writer's `fdatasync`, per batch of appends.
    Fsync,
    /// One AppendEntries round trip with entries, leader to a follower,
    /// per request.
    Replicate,
    /// One AppendEntries round trip without entries (a heartbeat, or the
    /// commit index moving on), per request.
    ReplicateEmpty,
    /// A follower serving an AppendEntries request with entries (log
    /// append, its fsync, the answer), per request.
    FollowerAppend,
    /// A follower serving one without entries.
    FollowerAppendEmpty,
    /// From a batch of committed entries reaching the state machine to the
    /// start of its apply (near zero on the apply stack; the hand-off when
    /// slow handlers send batches to the apply thread), per batch.
    ApplyQueue,
    /// Applying a batch (handlers, dedup, markers), per batch.
    ApplyBatch,
    /// From the answer leaving the state machine to `client_write`
    /// returning on the leader (the way back through openraft).
    AnswerBack,
    /// The read-your-writes wait after the leader answered, per write.
    ReadYourWrites,
    /// The whole `send` of a command, as the caller sees it.
    Total,
}

const STAGES: usize = Stage::Total as usize + 1;

const NAMES: [&str; STAGES] = [
    "admit",
    "encode",
    "commit",
    "wal_queue",
    "wal_write",
    "fsync",
    "replicate",
    "replicate_empty",
    "follower_append",
    "follower_append_empty",
    "apply_queue",
    "apply_batch",
    "answer_back",
    "read_your_writes",
    "total",
];

static ON: AtomicBool = AtomicBool::new(false);

/// Buckets: exact microseconds below 1,024, then 32 per power of two up to
/// ~1 hour (3 % error).
const LINEAR: usize = 1024;
const PER_OCTAVE: usize = 32;
const OCTAVES: usize = 22;
const BUCKETS: usize = LINEAR + PER_OCTAVE * OCTAVES;

struct Hist {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Hist {
    const fn new() -> Hist {
        Hist {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
        }
    }
}

static HISTS: [Hist; STAGES] = [const { Hist::new() }; STAGES];

fn bucket(us: u64) -> usize {
    if us < LINEAR as u64 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize; // >= 10
    let shift = log - 5;
    let sub = ((us >> shift) as usize) & (PER_OCTAVE - 1);
    (LINEAR + (log - 10) * PER_OCTAVE + sub).min(BUCKETS - 1)
}

fn value(b: usize) -> u64 {
    if b < LINEAR {
        return b as u64;
    }
    let log = (b - LINEAR) / PER_OCTAVE + 10;
    let sub = ((b - LINEAR) % PER_OCTAVE) as u64;
    (1u64 << log) + (sub << (log - 5))
}

/// Whether stages are being recorded (take a start time only then).
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A start time if recording, for [`since`].
#[inline]
pub(crate) fn start() -> Option<Instant> {
    on().then(Instant::now)
}

/// Records the time since `t0` (from [`start`]) under `stage`.
#[inline]
pub(crate) fn since(stage: Stage, t0: Option<Instant>) {
    if let Some(t0) = t0 {
        record(stage, t0.elapsed());
    }
}

/// Records `d` under `stage` (if recording).
pub(crate) fn record(stage: Stage, d: Duration) {
    if !on() {
        return;
    }
    let h = &HISTS[stage as usize];
    let us = d.as_micros().min(u64::MAX as u128) as u64;
    h.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    h.sum_ns
        .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// Turns recording on or off.
pub(crate) fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Forgets everything recorded.
pub(crate) fn reset() {
    for h in &HISTS {
        for c in &h.counts {
            c.store(0, Ordering::Relaxed);
        }
        h.sum_ns.store(0, Ordering::Relaxed);
    }
}

/// One stage's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFigures {
    /// The stage's name (see the module's documentation of each).
    pub name: &'static str,
    /// How many times it was recorded.
    pub count: u64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Mean, microseconds (fractional).
    pub mean_us: f64,
}

/// The figures of every stage recorded at least once, in write order.
pub(crate) fn report() -> Vec<StageFigures> {
    let mut out = Vec::new();
    for (i, h) in HISTS.iter().enumerate() {
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let pct = |p: f64| {
            let rank = ((total as f64 - 1.0) * p).round() as u64;
            let mut seen = 0;
            for (b, c) in counts.iter().enumerate() {
                seen += c;
                if seen > rank {
                    return value(b);
                }
            }
            0
        };
        out.push(StageFigures {
            name: NAMES[i],
            count: total,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            mean_us: h.sum_ns.load(Ordering::Relaxed) as f64 / total as f64 / 1000.0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_three_percent() {
        for us in [0u64, 1, 999, 1023, 1024, 1500, 4096, 65_000, 10_000_000] {
            let v = value(bucket(us));
            assert!(v <= us, "{us} -> {v}");
            assert!((us - v) as f64 <= us as f64 * 0.032, "{us} -> {v}");
        }
    }
}
