//! Unit-test your handlers in one process, with no cluster, and the hooks
//! that catga's own cluster tests use (fault switch, forced elections,
//! state fingerprints). Nothing in the runtime imports this module.
//!
//! [`TestApp`] runs commands through exactly the path a cluster uses (encode
//! → replicated-log envelope → state machine with dedup → decode), runs
//! queries against the local states, runs the event handlers of published
//! events, records those events, and takes and restores snapshots.
//!
//! The registry is per program: every annotated item linked into a test
//! binary is in it. Rust 2024 merges doctests into one binary, so a doctest
//! that starts a `TestApp` or a node should be marked ```` ```standalone_crate ````
//! (as this one is) when other doctests declare messages or states with the
//! same names.
//!
//! ```standalone_crate
//! use catga::prelude::*;
//! use catga::testing::TestApp;
//!
//! #[state(name = "doc.counter")]
//! #[derive(Default)]
//! struct Counter { n: u64 }
//!
//! #[command] struct Add { by: u64 }
//! #[query] struct Get;
//! #[event] struct Added { total: u64 }
//!
//! #[handler]
//! fn add(cmd: Add, c: &mut Counter, ctx: &mut CommandContext) -> u64 {
//!     c.n += cmd.by;
//!     ctx.publish(Added { total: c.n });
//!     c.n
//! }
//!
//! #[handler]
//! fn get(_: Get, c: &Counter) -> u64 { c.n }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut app = TestApp::new().unwrap();
//! assert_eq!(app.send(Add { by: 2 }).await.unwrap(), 2);
//! assert_eq!(app.send(Get).await.unwrap(), 2);
//! assert_eq!(app.events::<Added>().len(), 1);
//! let snap = app.snapshot().unwrap();
//! app.send(Add { by: 5 }).await.unwrap();
//! app.restore(&snap).unwrap();
//! assert_eq!(app.send(Get).await.unwrap(), 2);
//! # });
//! ```

use crate::codec;
use crate::context::{EventContext, PublishedEvent};
use crate::dispatch::run_event_handlers;
use crate::error::Result;
use crate::machine::{Applied, EntryKind, Envelope, Machine};
use crate::message::{BoxFuture, Event, Handled, Publishable, Route};
use crate::node::Node;
use crate::registry::Registry;

pub use crate::transport::Faults;

/// A single-process stand-in for a cluster, for tests.
#[derive(Debug)]
pub struct TestApp {
    machine: Machine,
    client: u64,
    next_seq: u64,
    next_index: u64,
    time_ms: u64,
    events: Vec<(u64, PublishedEvent)>,
}

impl TestApp {
    /// A fresh app: every registered state at its default.
    pub fn new() -> Result<Self> {
        Ok(TestApp {
            machine: Machine::new()?,
            client: 1,
            next_seq: 1,
            next_index: 1,
            time_ms: 1,
            events: Vec::new(),
        })
    }

    /// Sets the timestamp (ms) that the next commands see in
    /// [`crate::CommandContext::timestamp_ms`].
    pub fn set_time_ms(&mut self, ms: u64) {
        self.time_ms = ms;
    }

    /// Sends a command (applied as in the cluster, then its events' handlers
    /// run) or a query (run on the state).
    ///
    /// (A boxed future, as `Node::send`: one compile error for a type that
    /// cannot be sent.)
    pub fn send<M: Handled>(&mut self, msg: M) -> BoxFuture<'_, Result<M::Output>> {
        Box::pin(async move {
            match M::ROUTE {
                Route::Command { decode } => {
                    let payload = codec::encode_user(M::NAME, &msg)?;
                    let applied = self.submit(EntryKind::Command, M::NAME, payload).await;
                    let bytes = applied.response?;
                    Ok(decode(&bytes)?)
                }
                Route::StatelessQuery { run, .. } => Ok(run(msg).await),
                Route::Query { .. } => self.machine.query(msg),
            }
        })
    }

    /// Publishes an event as `node.publish` does: through the log, then to
    /// every event handler.
    pub fn publish<E: Publishable>(&mut self, event: E) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let payload = codec::encode_user(E::NAME, &event)?;
            self.submit(EntryKind::Event, E::NAME, payload)
                .await
                .response?;
            Ok(())
        })
    }

    /// Applies a raw envelope at the next log index, as a replica would
    /// (e.g. to replay a request with the same client and sequence number).
    #[doc(hidden)]
    pub async fn apply(&mut self, envelope: Envelope) -> Applied {
        let index = self.next_index;
        self.next_index += 1;
        let applied = self.machine.apply(index, &envelope);
        for ev in &applied.events {
            self.events.push((index, ev.clone()));
            run_event_handlers(
                ev,
                EventContext {
                    node_id: 0,
                    log_index: index,
                },
            )
            .await;
        }
        applied
    }

    async fn submit(&mut self, kind: EntryKind, name: &str, payload: Vec<u8>) -> Applied {
        let seq = self.next_seq;
        self.next_seq += 1;
        let env = Envelope {
            kind,
            name: name.to_string(),
            payload,
            client: self.client,
            seq,
            ack_below: seq,
            time_ms: self.time_ms,
            key: None,
        };
        self.apply(env).await
    }

    /// Every event of type `E` published so far, in order.
    pub fn events<E: Event>(&self) -> Vec<E> {
        self.events
            .iter()
            .filter(|(_, e)| e.name == E::NAME)
            .filter_map(|(_, e)| codec::decode_user(E::NAME, &e.payload).ok())
            .collect()
    }

    /// The wire names of the events published so far, in order, with the
    /// log index that produced each.
    pub fn event_names(&self) -> Vec<(u64, &str)> {
        self.events
            .iter()
            .map(|(i, e)| (*i, e.name.as_str()))
            .collect()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// A typed view of a state.
    pub fn state<S: crate::state::State>(&self) -> Option<&S> {
        self.machine.state::<S>()
    }

    /// The index of the last entry applied.
    pub fn last_applied(&self) -> u64 {
        self.machine.last_applied()
    }

    /// A snapshot of every state and the dedup table.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        self.machine.snapshot()
    }

    /// Restores a snapshot taken with [`TestApp::snapshot`] (or by a node).
    pub fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        self.machine.restore(bytes)?;
        self.next_index = self.machine.last_applied() + 1;
        Ok(())
    }
}

/// The snapshot name and Rust type of every state this program registers
/// (the names a snapshot is keyed by; see [`crate::State`]).
pub fn state_names() -> Result<Vec<(String, &'static str)>> {
    let reg = Registry::global()?;
    Ok(reg
        .states
        .iter()
        .map(|s| (s.name.clone(), s.info.type_name))
        .collect())
}

/// The fault switch of a node's transport: block or delay its links to
/// given peers (a network partition without touching the OS).
pub fn faults(node: &Node) -> &Faults {
    node.raft().faults()
}

/// Asks a node to start an election now.
pub async fn campaign(node: &Node) -> Result<()> {
    node.raft().trigger_election().await
}

/// A node's applied index and an encoding of its whole replicated state
/// (states and dedup table): equal on replicas that applied the same log.
pub fn state_fingerprint(node: &Node) -> Result<(u64, Vec<u8>)> {
    node.raft().read(|m| Ok((m.last_applied(), m.snapshot()?)))
}

/// Where writes spend their time, stage by stage, for benchmarks
/// (`examples/bench --stages`): turn it on, run load, read the figures.
/// Off by default, where each probe point costs one relaxed atomic load.
/// Process-wide: with several nodes in one process the storage and apply
/// stages count every node's work.
pub mod stages {
    pub use crate::probe::StageFigures;

    /// Starts (or stops) recording.
    pub fn enable(on: bool) {
        crate::probe::enable(on)
    }

    /// Forgets what was recorded.
    pub fn reset() {
        crate::probe::reset()
    }

    /// Every stage recorded so far, in the order a write meets them.
    pub fn report() -> Vec<StageFigures> {
        crate::probe::report()
    }
}
