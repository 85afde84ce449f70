//! The state machine core: applies encoded entries to the states, exactly
//! once per (client, sequence), and snapshots/restores everything. It knows
//! nothing of Raft: the Raft layer feeds it entries in log order.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};

use crate::context::{CommandContext, PublishedEvent};
use crate::dedup::{Check, Dedup};
use crate::error::{ApplyError, Error, Result};
use crate::message::{Handled, MessageKind, Route};
use crate::registry::Registry;
use crate::state::Slot;

/// What a log entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Apply a command with its handler.
    Command,
    /// Deliver an event (published directly, not by a command).
    Event,
}

/// One client request as it is written to the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Command or event.
    pub kind: EntryKind,
    /// The message's wire name.
    pub name: String,
    /// The message, encoded with rmp-serde as a map.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The sending client.
    pub client: u64,
    /// The client's sequence number for this request.
    pub seq: u64,
    /// Every response below this sequence number has reached the client.
    pub ack_below: u64,
    /// Milliseconds since the Unix epoch, chosen by the proposer.
    pub time_ms: u64,
    /// An idempotency key chosen by the caller (`Node::send_keyed`): the
    /// first outcome per key is returned to every later request with it.
    /// Absent from the encoding when `None` (older nodes read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The wire name of a quarantine decision (see `raft/poison.rs`): an entry
/// whose payload is a [`Quarantine`]. Written by the leader only; a program
/// that does not know it stops before it (as before any name it lacks).
pub(crate) const QUARANTINE: &str = "catga.Quarantine";

/// The payload of a [`QUARANTINE`] entry: the earlier entry that every
/// replica applies as [`ApplyError::Poisoned`] instead of running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Quarantine {
    /// The quarantined entry's log index.
    pub(crate) index: u64,
    /// Its message's wire name (for the answer and the logs).
    pub(crate) name: String,
}

impl Quarantine {
    /// The decision named by `env`, if it is one (a payload that does not
    /// decode is no decision: the same on every replica).
    pub(crate) fn of(env: &Envelope) -> Option<Quarantine> {
        if env.kind != EntryKind::Command || env.name != QUARANTINE {
            return None;
        }
        crate::codec::decode(&env.payload, crate::codec::INTERNAL_DEPTH).ok()
    }

    /// The entry that carries this decision.
    pub(crate) fn envelope(&self, time_ms: u64) -> Result<Envelope> {
        Ok(Envelope {
            kind: EntryKind::Command,
            name: QUARANTINE.to_string(),
            payload: crate::codec::encode(self).map_err(|e| Error::Raft(e.to_string()))?,
            client: 0,
            seq: 0,
            ack_below: 0,
            time_ms,
            key: None,
        })
    }
}

/// The outcome of applying one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The handler's encoded output, or why there is none.
    pub response: Result<Vec<u8>, ApplyError>,
    /// Events published while applying (empty when the entry was a repeat).
    pub events: Vec<PublishedEvent>,
    /// The log index of the entry, set by the leader in its answer (0 when
    /// unknown, e.g. from a leader of an older version): a follower that
    /// forwarded the write waits until it has applied this index itself,
    /// so a local query after the write sees it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The head of a snapshot (rmp-serde, named fields).
///
/// Format 2 (written now) is this head, with the state names in `names`,
/// followed by each of those states as its own rmp-serde value, in order:
/// states are encoded straight to the file and decoded straight from it,
/// never held whole as bytes. Format 1 (read only) held every state as
/// bytes inside the head (`states`).
#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    format: u32,
    last_applied: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    states: Vec<(String, serde_bytes::ByteBuf)>,
    dedup: Dedup,
    /// Entries applied as [`ApplyError::Poisoned`] (index → wire name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    quarantined: BTreeMap<u64, String>,
}

const SNAPSHOT_FORMAT: u32 = 2;
/// Snapshots of this format are still read (written before streaming).
const SNAPSHOT_FORMAT_BYTES: u32 = 1;

/// All states plus the dedup table: the replicated state machine.
pub struct Machine {
    registry: &'static Registry,
    states: Vec<Slot>,
    /// Per state: whether a command handler ever ran on it. Untouched states
    /// hold their default and are left out of snapshots, so a new `#[state]`
    /// type does not make older nodes refuse every snapshot before anything
    /// uses it. The same on every replica (it follows the log).
    touched: Vec<bool>,
    dedup: Dedup,
    last_applied: u64,
    /// Entries applied as [`ApplyError::Poisoned`] (index → wire name),
    /// so a node can tell a quarantined entry from one it ran.
    quarantined: BTreeMap<u64, String>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("states", &self.registry.states.len())
            .field("dedup_clients", &self.dedup.clients())
            .field("last_applied", &self.last_applied)
            .finish()
    }
}

impl Machine {
    /// A machine holding the default value of every registered state.
    pub fn new() -> Result<Self> {
        let registry = Registry::global()?;
        Ok(Machine {
            registry,
            states: registry.states.iter().map(|s| (s.info.new)()).collect(),
            touched: vec![false; registry.states.len()],
            dedup: Dedup::default(),
            last_applied: 0,
            quarantined: BTreeMap::new(),
        })
    }

    /// The index of the last entry applied.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Number of clients in the dedup table.
    pub fn dedup_clients(&self) -> usize {
        self.dedup.clients()
    }

    /// Whether this program can apply `env` (a command with a handler here,
    /// or an event). An entry it cannot apply must not be applied at all:
    /// skipping it would make this replica differ from the others.
    pub fn can_apply(&self, env: &Envelope) -> bool {
        (env.kind == EntryKind::Command && env.name == QUARANTINE)
            || self
                .registry
                .applies(&env.name, env.kind == EntryKind::Event)
    }

    /// Applies the entry at `index` as quarantined: its handler does not
    /// run; the request's answer is [`ApplyError::Poisoned`], recorded like
    /// any answer (a retry of the request, or of its idempotency key, gets
    /// it). Deterministic: the same on every replica.
    pub(crate) fn poison(&mut self, index: u64, env: &Envelope) -> Applied {
        self.quarantined.insert(index, env.name.clone());
        self.apply_with(index, env, |_, index, env| Applied {
            response: Err(ApplyError::Poisoned {
                index,
                name: env.name.clone(),
            }),
            events: Vec::new(),
            index,
        })
    }

    /// Whether the entry at `index` was applied as quarantined here.
    pub(crate) fn was_quarantined(&self, index: u64) -> bool {
        self.quarantined.contains_key(&index)
    }

    /// Applies the entry at `index`. Never panics because of the entry or the
    /// handler: every failure is an [`ApplyError`] in the result.
    pub fn apply(&mut self, index: u64, env: &Envelope) -> Applied {
        self.apply_with(index, env, Machine::apply_fresh)
    }

    /// [`Machine::apply`] with `fresh` for a request that is not a repeat.
    fn apply_with(
        &mut self,
        index: u64,
        env: &Envelope,
        fresh: impl FnOnce(&mut Machine, u64, &Envelope) -> Applied,
    ) -> Applied {
        self.last_applied = self.last_applied.max(index);
        match self
            .dedup
            .check(env.client, env.seq, env.ack_below, env.time_ms)
        {
            Check::Cached(response) => {
                return Applied {
                    response,
                    events: Vec::new(),
                    index,
                };
            }
            Check::Apply => {}
        }
        if let Some(response) = env.key.as_deref().and_then(|k| self.dedup.keyed(k)) {
            // a retry under the same key, from any client: the first outcome
            self.dedup.record(env.client, env.seq, response.clone());
            return Applied {
                response,
                events: Vec::new(),
                index,
            };
        }
        let applied = fresh(self, index, env);
        self.dedup
            .record(env.client, env.seq, applied.response.clone());
        if let Some(k) = &env.key {
            self.dedup
                .record_key(k, env.time_ms, applied.response.clone());
        }
        applied
    }

    /// Marks `index` applied without a client request (a membership or blank entry).
    pub fn skip(&mut self, index: u64) {
        self.last_applied = self.last_applied.max(index);
    }

    fn apply_fresh(&mut self, index: u64, env: &Envelope) -> Applied {
        match env.kind {
            EntryKind::Event => {
                let is_event = self
                    .registry
                    .messages
                    .get(env.name.as_str())
                    .is_some_and(|m| m.kind == MessageKind::Event);
                if !is_event {
                    return Applied {
                        response: Err(ApplyError::UnknownMessage {
                            name: env.name.clone(),
                        }),
                        events: Vec::new(),
                        index,
                    };
                }
                Applied {
                    response: Ok(Vec::new()),
                    events: vec![PublishedEvent {
                        name: env.name.clone(),
                        payload: env.payload.clone(),
                    }],
                    index,
                }
            }
            EntryKind::Command => {
                let Some(cmd) = self.registry.commands.get(env.name.as_str()) else {
                    return Applied {
                        response: Err(ApplyError::UnknownMessage {
                            name: env.name.clone(),
                        }),
                        events: Vec::new(),
                        index,
                    };
                };
                let mut ctx = CommandContext::new(index, env.time_ms, env.client, env.seq);
                self.touched[cmd.slot] = true;
                let state: &mut (dyn Any + Send + Sync) = &mut *self.states[cmd.slot];
                let apply = cmd.apply;
                let outcome =
                    catch_unwind(AssertUnwindSafe(|| apply(&env.payload, state, &mut ctx)));
                match outcome {
                    Ok(Ok(bytes)) => match ctx.error.take() {
                        None => Applied {
                            response: Ok(bytes),
                            events: ctx.events,
                            index,
                        },
                        Some(e) => Applied {
                            response: Err(e),
                            events: Vec::new(),
                            index,
                        },
                    },
                    Ok(Err(e)) => Applied {
                        response: Err(e),
                        events: Vec::new(),
                        index,
                    },
                    Err(panic) => Applied {
                        response: Err(ApplyError::Panicked {
                            handler: cmd.handler.to_string(),
                            message: panic_message(&*panic),
                        }),
                        events: Vec::new(),
                        index,
                    },
                }
            }
        }
    }

    /// Runs a query that reads state against this machine's states, without
    /// encoding. Commands and state-less queries are refused (they go through
    /// the log, or need no state).
    #[inline]
    pub fn query<M: Handled>(&self, msg: M) -> Result<M::Output> {
        match M::ROUTE {
            Route::Query { state, run, .. } => self.run_query(state, run, msg),
            Route::Command { .. } => Err(Error::WrongKind {
                name: M::NAME,
                advice: "is a command: send it with `send` (it is replicated, not read)",
            }),
            Route::StatelessQuery { .. } => Err(Error::WrongKind {
                name: M::NAME,
                advice: "is a query whose handler reads no state: send it with `send`",
            }),
        }
    }

    #[inline]
    fn run_query<M: Handled>(
        &self,
        state: fn() -> crate::state::StateInfo,
        run: fn(M, &(dyn Any + Send + Sync)) -> Option<M::Output>,
        msg: M,
    ) -> Result<M::Output> {
        let info = state();
        let slot = self
            .registry
            .slot_of(info.type_id)
            .ok_or(Error::UnknownState(info.type_name))?;
        run(msg, &*self.states[slot]).ok_or(Error::UnknownState(info.type_name))
    }

    /// A state, type-erased, by its type's info (for queries run by name).
    pub(crate) fn state_any(
        &self,
        info: crate::state::StateInfo,
    ) -> Option<&(dyn Any + Send + Sync)> {
        let slot = self.registry.slot_of(info.type_id)?;
        Some(&*self.states[slot])
    }

    /// A typed view of a state.
    pub fn state<S: crate::state::State>(&self) -> Option<&S> {
        let slot = self.registry.slot_of(std::any::TypeId::of::<S>())?;
        self.states[slot].downcast_ref::<S>()
    }

    /// Encodes every state a command touched, the dedup table and the last
    /// applied index.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.snapshot_to(&mut out)?;
        Ok(out)
    }

    /// [`Machine::snapshot`] straight into a writer: each state is encoded
    /// into it directly, so memory does not grow with the state's size.
    pub fn snapshot_to(&self, w: &mut dyn std::io::Write) -> Result<()> {
        let touched = || {
            self.states
                .iter()
                .zip(&self.registry.states)
                .zip(&self.touched)
                .filter(|(_, touched)| **touched)
                .map(|(s, _)| s)
        };
        let head = SnapshotHead {
            format: SNAPSHOT_FORMAT,
            last_applied: self.last_applied,
            names: touched().map(|(_, info)| info.name.clone()).collect(),
            states: Vec::new(),
            dedup: self.dedup.clone(),
            quarantined: self.quarantined.clone(),
        };
        crate::codec::encode_into(&mut *w, &head).map_err(|e| Error::Snapshot(e.to_string()))?;
        for (slot, info) in touched() {
            (info.info.encode_to)(&**slot, w)
                .map_err(|e| Error::Snapshot(format!("state `{}`: {e}", info.name)))?;
        }
        Ok(())
    }

    /// Replaces everything with the content of a snapshot. On error nothing
    /// changes. States missing from the snapshot start from their default; a
    /// state in the snapshot that this program does not know is an error
    /// (restoring would silently drop it).
    pub fn restore(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.restore_from(&mut bytes)
    }

    /// [`Machine::restore`] from a reader, decoding each state straight from
    /// it (give it a buffered reader).
    pub fn restore_from(&mut self, r: &mut dyn std::io::Read) -> Result<()> {
        let head: SnapshotHead = crate::codec::decode_from(&mut *r, crate::codec::INTERNAL_DEPTH)
            .map_err(|e| Error::Snapshot(format!("decode: {e}")))?;
        if head.format != SNAPSHOT_FORMAT && head.format != SNAPSHOT_FORMAT_BYTES {
            return Err(Error::Snapshot(format!(
                "unsupported snapshot format {} (this program reads {SNAPSHOT_FORMAT_BYTES} and \
                 {SNAPSHOT_FORMAT})",
                head.format
            )));
        }
        let mut states: Vec<Slot> = self
            .registry
            .states
            .iter()
            .map(|s| (s.info.new)())
            .collect();
        let mut touched = vec![false; states.len()];
        let position = |name: &str| {
            self.registry
                .states
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| {
                    Error::Snapshot(format!(
                        "the snapshot holds state `{name}`, which this program does not \
                         register: the node that took it runs a newer version; upgrade this node"
                    ))
                })
        };
        if head.format == SNAPSHOT_FORMAT_BYTES {
            for (name, bytes) in &head.states {
                let i = position(name)?;
                touched[i] = true;
                states[i] = (self.registry.states[i].info.decode)(bytes)
                    .map_err(|e| Error::Snapshot(format!("state `{name}`: {e}")))?;
            }
        } else {
            // every name is checked before any state is decoded: an unknown
            // one is refused at once, not after decoding gigabytes
            let slots = head
                .names
                .iter()
                .map(|n| position(n))
                .collect::<Result<Vec<_>>>()?;
            for (name, i) in head.names.iter().zip(slots) {
                if touched[i] {
                    return Err(Error::Snapshot(format!("state `{name}` appears twice")));
                }
                touched[i] = true;
                states[i] = (self.registry.states[i].info.decode_from)(&mut *r)
                    .map_err(|e| Error::Snapshot(format!("state `{name}`: {e}")))?;
            }
        }
        let mut dedup = head.dedup;
        dedup.reindex();
        self.states = states;
        self.touched = touched;
        self.dedup = dedup;
        self.last_applied = head.last_applied;
        self.quarantined = head.quarantined;
        Ok(())
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
