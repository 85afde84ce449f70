//! Why this node cannot make progress with the cluster: an entry in its log
//! that its program cannot apply, or a snapshot from the leader that it
//! cannot restore. Each reason is logged at ERROR once and reported by
//! health (the node is not ready while one is set).

use parking_lot::Mutex;

/// The reasons this node is stuck, if any.
#[derive(Default)]
pub(crate) struct Stall {
    /// Set once, never cleared: the apply loop waits for shutdown after it.
    apply: Mutex<Option<String>>,
    /// Set while the leader's snapshots are refused; cleared by one that restores.
    snapshot: Mutex<Option<String>>,
}

impl Stall {
    /// The apply loop stopped before entry `index` named `name`.
    pub(crate) fn cannot_apply(&self, index: u64, name: &str) {
        let mut g = self.apply.lock();
        if g.is_none() {
            let reason = format!(
                "cannot apply log entry {index}: no handler for `{name}` in this program \
                 (the leader runs a newer version); applying stopped here: restart this node \
                 with the version that has the handler and it resumes from its log"
            );
            tracing::error!(index, message = name, "{reason}");
            *g = Some(reason);
        }
    }

    /// A snapshot from the leader was refused; logged once per distinct reason.
    pub(crate) fn snapshot_refused(&self, reason: &str) {
        let mut g = self.snapshot.lock();
        if g.as_deref() != Some(reason) {
            tracing::error!(
                "refused the leader's snapshot: {reason}; this node cannot catch up until it \
                 runs a version that knows every state in the snapshot"
            );
            *g = Some(reason.to_string());
        }
    }

    /// A snapshot was restored: the leader's snapshots are readable again.
    pub(crate) fn snapshot_restored(&self) {
        *self.snapshot.lock() = None;
    }

    /// Why this node is stuck, if it is.
    pub(crate) fn reason(&self) -> Option<String> {
        self.apply
            .lock()
            .clone()
            .or_else(|| self.snapshot.lock().clone())
    }

    /// Whether the apply loop is stopped (for the leader to hand over).
    pub(crate) fn apply_stopped(&self) -> bool {
        self.apply.lock().is_some()
    }
}
