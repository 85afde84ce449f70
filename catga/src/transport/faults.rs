//! The test-only fault switch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// A switch for injecting network faults in tests, shared by one node's
/// server and connection pool. Cutting a node off from peer `p` means: calls
/// to `p` fail at once as unreachable, responses from `p` are dropped, and
/// requests from `p` are dropped with their connection closed. When no fault
/// is set, every check is one atomic load.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whether any fault is set; the fast path reads only this.
    active: AtomicBool,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    blocked: HashSet<u64>,
    delays: HashMap<u64, Duration>,
}

impl State {
    fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.delays.is_empty()
    }
}

impl Faults {
    /// Cuts the link to and from node `peer`.
    pub fn block(&self, peer: u64) {
        self.update(|s| {
            s.blocked.insert(peer);
        });
    }

    /// Restores the link to and from node `peer`.
    pub fn unblock(&self, peer: u64) {
        self.update(|s| {
            s.blocked.remove(&peer);
        });
    }

    /// Removes every fault: all links restored, no delays.
    pub fn heal(&self) {
        self.update(|s| {
            s.blocked.clear();
            s.delays.clear();
        });
    }

    /// Delays every request sent to node `peer` by `d` (zero removes the delay).
    pub fn delay(&self, peer: u64, d: Duration) {
        self.update(|s| {
            if d.is_zero() {
                s.delays.remove(&peer);
            } else {
                s.delays.insert(peer, d);
            }
        });
    }

    /// Whether the link to node `peer` is cut.
    pub fn is_blocked(&self, peer: u64) -> bool {
        if !self.inner.active.load(Ordering::Acquire) {
            return false;
        }
        self.inner.state.read().blocked.contains(&peer)
    }

    /// The delay set for requests to node `peer`, if any.
    pub(crate) fn delay_of(&self, peer: u64) -> Option<Duration> {
        if !self.inner.active.load(Ordering::Acquire) {
            return None;
        }
        self.inner.state.read().delays.get(&peer).copied()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.inner.state.write();
        f(&mut state);
        self.inner
            .active
            .store(!state.is_empty(), Ordering::Release);
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.read();
        f.debug_struct("Faults")
            .field("blocked", &state.blocked)
            .field("delays", &state.delays)
            .finish()
    }
}
