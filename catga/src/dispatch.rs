//! Dispatch to the handlers linked into this program that run outside the
//! log: event handlers (on every node, after an entry is applied).
//! Command and query handlers are dispatched by [`crate::machine`].

use crate::context::{EventContext, PublishedEvent};
use crate::machine::panic_message;
use crate::registry::Registry;

/// Runs every local handler of an event; a handler that fails to decode or
/// panics is logged and does not stop the others.
pub(crate) async fn run_event_handlers(ev: &PublishedEvent, ctx: EventContext) {
    let Ok(reg) = Registry::global() else { return };
    let Some(handlers) = reg.events.get(ev.name.as_str()) else {
        return;
    };
    for h in handlers {
        match (h.call)(&ev.payload, ctx.clone()) {
            Ok(fut) => {
                if let Err(p) =
                    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await
                {
                    tracing::error!(handler = h.handler, event = %ev.name, panic = %panic_message(&*p), "event handler panicked");
                }
            }
            Err(e) => {
                tracing::error!(handler = h.handler, event = %ev.name, error = %e, "event handler could not decode the event")
            }
        }
    }
}
