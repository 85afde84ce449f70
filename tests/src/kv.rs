//! A key-value register domain for the fault tests: a few keys holding
//! `i64`s, with set, compare-and-set and increment commands and a local
//! `Get` query (read it linearizably with
//! `node.query(Get { .. }, Consistency::Linearizable)`).
//!
//! Every write carries an `id`; a non-zero id is appended to the key's
//! *ledger* when the write is applied, so a test can tell which writes took
//! effect, in which order, and whether any took effect twice.

use std::collections::BTreeMap;

use catga::prelude::*;

/// The replicated key-value state.
#[state(name = "tests.kv")]
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Kv {
    /// The current value of every key that was ever written.
    pub values: BTreeMap<String, i64>,
    /// Per key, the ids of the writes applied to it, in log order (ids of 0
    /// are not recorded).
    pub ledger: BTreeMap<String, Vec<u64>>,
}

impl Kv {
    fn record(&mut self, key: &str, id: u64) {
        if id != 0 {
            self.ledger.entry(key.to_string()).or_default().push(id);
        }
    }
}

/// Sets `key` to `value`.
#[command(name = "kv.Set")]
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    pub key: String,
    pub value: i64,
    /// Recorded in the key's ledger when non-zero.
    pub id: u64,
}

/// Sets `key` to `new` if it holds `expected` (a missing key holds nothing,
/// so it never matches); returns whether it did.
#[command(name = "kv.Cas")]
#[derive(Debug, Clone, PartialEq)]
pub struct Cas {
    pub key: String,
    pub expected: i64,
    pub new: i64,
    /// Recorded in the key's ledger when non-zero.
    pub id: u64,
}

/// Adds `by` to `key` (a missing key counts as 0); returns the new value.
#[command(name = "kv.Incr")]
#[derive(Debug, Clone, PartialEq)]
pub struct Incr {
    pub key: String,
    pub by: i64,
    /// Recorded in the key's ledger when non-zero.
    pub id: u64,
}

/// The value of `key`, if it was ever written. Local by default.
#[query(name = "kv.Get")]
#[derive(Debug, Clone, PartialEq)]
pub struct Get {
    pub key: String,
}

#[handler]
pub fn kv_set(cmd: Set, kv: &mut Kv) {
    kv.values.insert(cmd.key.clone(), cmd.value);
    kv.record(&cmd.key, cmd.id);
}

#[handler]
pub fn kv_cas(cmd: Cas, kv: &mut Kv) -> bool {
    let hit = kv.values.get(&cmd.key) == Some(&cmd.expected);
    if hit {
        kv.values.insert(cmd.key.clone(), cmd.new);
    }
    kv.record(&cmd.key, cmd.id);
    hit
}

#[handler]
pub fn kv_incr(cmd: Incr, kv: &mut Kv) -> i64 {
    let v = kv.values.entry(cmd.key.clone()).or_insert(0);
    *v = v.wrapping_add(cmd.by);
    let out = *v;
    kv.record(&cmd.key, cmd.id);
    out
}

#[handler]
pub fn kv_get(q: Get, kv: &Kv) -> Option<i64> {
    kv.values.get(&q.key).copied()
}
