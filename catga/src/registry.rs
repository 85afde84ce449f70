//! The registry: what the macros submitted through `inventory`, checked and
//! turned into lookup tables once, when the first node (or test app) starts.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::context::{CommandContext, EventContext};
use crate::error::{ApplyError, Error, Result};
use crate::message::{BoxFuture, MessageKind};
use crate::state::StateInfo;

/// Applies an encoded command to its (type-erased) state.
#[doc(hidden)]
pub(crate) type ApplyFn =
    fn(&[u8], &mut (dyn Any + Send + Sync), &mut CommandContext) -> Result<Vec<u8>, ApplyError>;
/// Decodes an event and starts its handler.
#[doc(hidden)]
pub(crate) type EventFn = fn(&[u8], EventContext) -> Result<BoxFuture<'static, ()>, ApplyError>;

/// Runs an encoded query against a (type-erased) state; its encoded answer.
#[doc(hidden)]
pub(crate) type StatefulRunFn = fn(&[u8], &(dyn Any + Send + Sync)) -> Result<Vec<u8>, ApplyError>;
/// Decodes a state-less query and starts it; its encoded answer.
#[doc(hidden)]
pub(crate) type StatelessRunFn =
    fn(&[u8]) -> Result<BoxFuture<'static, Result<Vec<u8>, ApplyError>>, ApplyError>;

/// Runs an encoded query on this node and encodes its answer: what the
/// mediator calls for a query sent from another node.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum QueryRunner {
    /// A handler that reads a state (found by the entry's `state`).
    Stateful(StatefulRunFn),
    /// A handler that reads no state (possibly `async`).
    Stateless(StatelessRunFn),
}

/// Submitted by `#[command]`, `#[query]`, `#[event]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct MessageEntry {
    pub name: &'static str,
    pub kind: MessageKind,
    pub rust_type: &'static str,
}
/// Submitted by `#[handler]` on a command handler.
#[doc(hidden)]
#[derive(Debug)]
pub struct CommandHandlerEntry {
    pub name: &'static str,
    pub handler: &'static str,
    pub state: fn() -> StateInfo,
    pub apply: ApplyFn,
}
/// Submitted by `#[handler]` on a query handler.
#[doc(hidden)]
#[derive(Debug)]
pub struct QueryHandlerEntry {
    pub name: &'static str,
    pub handler: &'static str,
    pub state: Option<fn() -> StateInfo>,
    pub run: QueryRunner,
}
/// Submitted by `#[handler]` on an event handler.
#[doc(hidden)]
#[derive(Debug)]
pub struct EventHandlerEntry {
    pub name: &'static str,
    pub handler: &'static str,
    pub call: EventFn,
}
/// Submitted by `#[state]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct StateEntry {
    pub name: &'static str,
    pub info: fn() -> StateInfo,
}

inventory::collect!(MessageEntry);
inventory::collect!(CommandHandlerEntry);
inventory::collect!(QueryHandlerEntry);
inventory::collect!(EventHandlerEntry);
inventory::collect!(StateEntry);

pub(crate) struct CommandSlot {
    pub apply: ApplyFn,
    pub slot: usize,
    pub handler: &'static str,
}

pub(crate) struct StateSlot {
    pub name: String,
    pub info: StateInfo,
}

/// What a node's program knows, as exchanged between nodes: the names of
/// the log entries it can apply (commands with a handler, events), the
/// names of its states, and a fingerprint of its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Capabilities {
    /// Sorted wire names of the commands and events it can apply.
    pub(crate) messages: Vec<String>,
    /// Sorted names of its states.
    pub(crate) states: Vec<String>,
    /// Equal on two programs with the same messages, handlers and states.
    pub(crate) fingerprint: u64,
}

impl Capabilities {
    /// Whether a program with these capabilities can apply `name`.
    pub(crate) fn applies(&self, name: &str) -> bool {
        self.messages
            .binary_search_by(|m| m.as_str().cmp(name))
            .is_ok()
    }
}

/// The checked lookup tables.
pub(crate) struct Registry {
    pub messages: HashMap<&'static str, &'static MessageEntry>,
    pub commands: HashMap<&'static str, CommandSlot>,
    pub queries: HashMap<&'static str, &'static QueryHandlerEntry>,
    pub events: HashMap<&'static str, Vec<&'static EventHandlerEntry>>,
    pub states: Vec<StateSlot>,
    state_by_type: Vec<(TypeId, usize)>,
}

impl Registry {
    /// The registry of this program, built and checked on first use.
    pub(crate) fn global() -> Result<&'static Registry> {
        static REGISTRY: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
        REGISTRY
            .get_or_init(|| {
                Registry::build(
                    inventory::iter::<MessageEntry>.into_iter(),
                    inventory::iter::<CommandHandlerEntry>.into_iter(),
                    inventory::iter::<QueryHandlerEntry>.into_iter(),
                    inventory::iter::<EventHandlerEntry>.into_iter(),
                    inventory::iter::<StateEntry>.into_iter(),
                )
            })
            .as_ref()
            .map_err(|e| Error::Registry(e.clone()))
    }

    pub(crate) fn build(
        messages: impl Iterator<Item = &'static MessageEntry>,
        commands: impl Iterator<Item = &'static CommandHandlerEntry>,
        queries: impl Iterator<Item = &'static QueryHandlerEntry>,
        events: impl Iterator<Item = &'static EventHandlerEntry>,
        states: impl Iterator<Item = &'static StateEntry>,
    ) -> std::result::Result<Registry, String> {
        let mut errors = Vec::new();
        let mut reg = Registry {
            messages: HashMap::new(),
            commands: HashMap::new(),
            queries: HashMap::new(),
            events: HashMap::new(),
            states: Vec::new(),
            state_by_type: Vec::new(),
        };
        for m in messages {
            if let Some(prev) = reg.messages.insert(m.name, m) {
                errors.push(format!(
                    "wire name `{}` is used by both `{}` ({}) and `{}` ({}); give one of them a unique `name = \"...\"`",
                    m.name, prev.rust_type, prev.kind, m.rust_type, m.kind
                ));
            }
        }
        for s in states {
            let info = (s.info)();
            reg.add_state(s.name.to_string(), info, &mut errors);
        }
        let mut command_list: Vec<&'static CommandHandlerEntry> = commands.collect();
        command_list.sort_by_key(|c| (c.name, c.handler));
        for c in command_list {
            let info = (c.state)();
            let slot = reg.state_slot(info, &mut errors);
            let entry = CommandSlot {
                apply: c.apply,
                slot,
                handler: c.handler,
            };
            if let Some(prev) = reg.commands.insert(c.name, entry) {
                errors.push(format!(
                    "command `{}` has two handlers: `{}` and `{}`",
                    c.name, prev.handler, c.handler
                ));
            }
        }
        for q in queries {
            if let Some(st) = q.state {
                reg.state_slot(st(), &mut errors);
            }
            if let Some(prev) = reg.queries.insert(q.name, q) {
                errors.push(format!(
                    "query `{}` has two handlers: `{}` and `{}`",
                    q.name, prev.handler, q.handler
                ));
            }
        }
        for e in events {
            reg.events.entry(e.name).or_default().push(e);
        }
        for list in reg.events.values_mut() {
            list.sort_by_key(|e| e.handler);
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(errors.join("; "))
        }
    }

    fn add_state(&mut self, name: String, info: StateInfo, errors: &mut Vec<String>) -> usize {
        if let Some(&(_, i)) = self.state_by_type.iter().find(|(t, _)| *t == info.type_id) {
            if self.states[i].name != name {
                errors.push(format!(
                    "state `{}` is given two names: `{}` and `{name}`",
                    info.type_name, self.states[i].name
                ));
            }
            return i;
        }
        if let Some(other) = self.states.iter().find(|s| s.name == name) {
            errors.push(format!(
                "state name `{name}` is used by both `{}` and `{}`; give one a unique #[state(name = \"...\")]",
                other.info.type_name, info.type_name
            ));
        }
        let i = self.states.len();
        self.states.push(StateSlot { name, info });
        self.state_by_type.push((info.type_id, i));
        i
    }

    fn state_slot(&mut self, info: StateInfo, errors: &mut Vec<String>) -> usize {
        match self.slot_of(info.type_id) {
            Some(i) => i,
            None => self.add_state(info.type_name.to_string(), info, errors),
        }
    }

    /// Whether this program can apply a log entry named `name` (a command
    /// with a handler, or an event: events need no local handler). The
    /// leader's check before proposing and the replica's check before
    /// applying use this one predicate.
    pub(crate) fn applies(&self, name: &str, event: bool) -> bool {
        if event {
            self.messages
                .get(name)
                .is_some_and(|m| m.kind == MessageKind::Event)
        } else {
            self.commands.contains_key(name)
        }
    }

    /// What this program knows, for the capability exchange between nodes
    /// (`raft/compat.rs`): the names of the entries it can apply, the names
    /// of its states, and a fingerprint of its whole schema (names, kinds,
    /// Rust types, handlers), equal on two nodes built from the same code.
    pub(crate) fn capabilities(&self) -> Capabilities {
        let mut messages: Vec<String> = self
            .messages
            .values()
            .filter(|m| m.kind == MessageKind::Event)
            .map(|m| m.name.to_string())
            .chain(self.commands.keys().map(|n| n.to_string()))
            .collect();
        messages.sort();
        messages.dedup();
        let mut states: Vec<String> = self.states.iter().map(|s| s.name.clone()).collect();
        states.sort();
        let mut schema: Vec<String> = self
            .messages
            .values()
            .map(|m| format!("m {} {} {}", m.kind, m.name, m.rust_type))
            .chain(
                self.commands
                    .iter()
                    .map(|(n, c)| format!("c {n} {} {}", c.handler, self.states[c.slot].name)),
            )
            .chain(
                self.states
                    .iter()
                    .map(|s| format!("s {} {}", s.name, s.info.type_name)),
            )
            .collect();
        schema.sort();
        // FNV-1a over the sorted lines: stable across builds and platforms
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &schema {
            for b in line.bytes().chain([b'\n']) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        Capabilities {
            messages,
            states,
            fingerprint: h,
        }
    }

    /// The slot of a state type.
    #[inline]
    pub(crate) fn slot_of(&self, type_id: TypeId) -> Option<usize> {
        self.state_by_type
            .iter()
            .find(|(t, _)| *t == type_id)
            .map(|&(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: MessageEntry = MessageEntry {
        name: "dup.Name",
        kind: MessageKind::Command,
        rust_type: "a::First",
    };
    static B: MessageEntry = MessageEntry {
        name: "dup.Name",
        kind: MessageKind::Event,
        rust_type: "b::Second",
    };
    static S1: StateEntry = StateEntry {
        name: "same",
        info: StateInfo::of::<u32>,
    };
    static S2: StateEntry = StateEntry {
        name: "same",
        info: StateInfo::of::<String>,
    };

    #[test]
    fn a_duplicate_wire_name_is_a_clear_error() {
        let err = Registry::build(
            [&A, &B].into_iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        )
        .err()
        .expect("duplicate refused");
        assert!(err.contains("`dup.Name`"), "{err}");
        assert!(
            err.contains("a::First") && err.contains("b::Second"),
            "{err}"
        );
        assert!(err.contains("name = "), "says how to fix it: {err}");
    }

    #[test]
    fn a_duplicate_state_name_is_a_clear_error() {
        let err = Registry::build(
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
            [&S1, &S2].into_iter(),
        )
        .err()
        .expect("duplicate refused");
        assert!(err.contains("state name `same`"), "{err}");
    }
}
