//! Event delivery on this node: the task that runs the local event handlers
//! of each applied entry's events, in log order, and reports how far it got.

use tokio::sync::{mpsc, watch};

use super::state_machine::EventBatch;
use crate::context::EventContext;

/// Runs until `stop` fires or the state machine drops its sender.
pub(super) async fn event_loop(
    node_id: u64,
    mut rx: mpsc::Receiver<EventBatch>,
    delivered: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            b = rx.recv() => b,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some((index, events)) = batch else { return };
        for ev in &events {
            crate::dispatch::run_event_handlers(
                ev,
                EventContext {
                    node_id,
                    log_index: index,
                },
            )
            .await;
        }
        delivered.send_replace(index);
    }
}
