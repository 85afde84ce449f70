//! What a handler may know about where it runs.

use crate::error::ApplyError;
use crate::message::Event;

/// An event published by a command handler (or by `publish`), encoded: part
/// of the log format (an applied entry's result).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishedEvent {
    /// The event's wire name.
    pub name: String,
    /// The event, encoded with rmp-serde as a map.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Given to a command handler (`ctx: &mut CommandContext`).
///
/// A command handler runs on every replica, so it must be deterministic:
/// instead of reading a clock or a random source it reads them here. Every
/// value is the same on every replica.
#[derive(Debug)]
pub struct CommandContext {
    log_index: u64,
    time_ms: u64,
    client: u64,
    seq: u64,
    rng: u64,
    pub(crate) events: Vec<PublishedEvent>,
    pub(crate) error: Option<ApplyError>,
}

impl CommandContext {
    pub(crate) fn new(log_index: u64, time_ms: u64, client: u64, seq: u64) -> Self {
        CommandContext {
            log_index,
            time_ms,
            client,
            seq,
            rng: log_index ^ 0x9E37_79B9_7F4A_7C15,
            events: Vec::new(),
            error: None,
        }
    }

    /// The index of this command in the replicated log: unique, increasing,
    /// and a handy deterministic id.
    pub fn log_index(&self) -> u64 {
        self.log_index
    }

    /// Wall-clock time in milliseconds since the Unix epoch, chosen once by
    /// the node that proposed the command.
    pub fn timestamp_ms(&self) -> u64 {
        self.time_ms
    }

    /// The id of the client (node handle) that sent the command.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The client's sequence number for this command.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// A pseudo-random number, seeded by the log index: the same on every
    /// replica (splitmix64).
    pub fn random_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Publishes an event. It is delivered to the event handlers of every
    /// node once this command is applied there, and only if the handler
    /// does not panic.
    pub fn publish<E: Event>(&mut self, event: E) {
        match crate::codec::encode_user(E::NAME, &event) {
            Ok(payload) => self.events.push(PublishedEvent {
                name: E::NAME.to_string(),
                payload,
            }),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// Given to an event handler (`ctx: EventContext`).
#[derive(Debug, Clone)]
pub struct EventContext {
    pub(crate) node_id: u64,
    pub(crate) log_index: u64,
}

impl EventContext {
    /// The id of the node this handler runs on.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The log index of the command (or publish) that produced the event;
    /// with at-least-once delivery, use it to drop repeats.
    pub fn log_index(&self) -> u64 {
        self.log_index
    }
}
