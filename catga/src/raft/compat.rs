//! The capability exchange: what each node's program knows (the entries it
//! can apply, its states, a schema fingerprint; see
//! [`crate::registry::Capabilities`]), asked with [`Rpc::Capabilities`] and
//! cached per peer. The leader checks it before proposing an entry, so a
//! rolling upgrade cannot put an entry into the log that a member cannot
//! apply: the caller is told to finish the upgrade first.
//!
//! Policy for what the leader cannot know:
//! - a member it never reached (down since before this leader started) is
//!   asked at the moment of the write (with a short deadline) if Raft has
//!   heard from it lately; if it still cannot be reached, or Raft has not
//!   heard from it (down, stalled, cut off: a stopped process accepts the
//!   connection and never answers, which would hold the write for the whole
//!   deadline), the write goes on and the member is asked in the background
//!   every [`REASK_AFTER`] until it answers: a majority may be up, and a
//!   member that later finds an entry it cannot apply stops before it and
//!   says so (`raft/stall.rs`), so replicas never differ;
//! - a member that answers the exchange with "bad request" runs a catga
//!   older than the exchange: treated the same way, with a WARN once;
//! - a member whose answer is cached is re-asked every
//!   [`REFRESH`] and again before a write is refused (it may have just been
//!   upgraded).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;

use super::Raft;
use super::wire::{Rpc, decode, encode};
use crate::error::Result;
use crate::registry::{Capabilities, Registry};
use crate::transport::{Pool, TransportError};

/// How often every node re-asks the members what they know.
pub(crate) const REFRESH: Duration = Duration::from_secs(2);
/// The deadline of one question.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// A write asks a member that did not answer (or is being asked) again at
/// most this often: a member that is down must not add a round trip to
/// every write. One that answers is asked again by every write it would
/// refuse (it may have just been upgraded).
pub(crate) const REASK_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
enum Known {
    Caps(Capabilities),
    /// The peer does not know the exchange (an older catga).
    Unsupported,
}

/// This node's capabilities and its cache of the other members'.
pub(crate) struct Compat {
    id: u64,
    pool: Pool,
    registry: &'static Registry,
    mine: Capabilities,
    peers: Mutex<HashMap<u64, Known>>,
    /// When each member was last asked, and whether it answered.
    asked: Mutex<HashMap<u64, (Instant, bool)>>,
    warned: Mutex<HashSet<(u64, u64)>>,
    /// The membership (its log id) for which every other member answered
    /// with this node's own fingerprint: while it is current, a write needs
    /// no other look (the common case, checked once per membership, not
    /// once per write). Cleared by any answer that differs.
    uniform: Mutex<Option<Option<super::LogId>>>,
}

/// Whether this node, leading, has had an answer from `id` to a heartbeat
/// or a replication within the longest election timeout.
fn heard_lately(raft: &Raft, id: u64) -> bool {
    use openraft::Instant as _;
    let within = Duration::from_millis(raft.config().election_timeout_max);
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.heartbeat
        .as_ref()
        .and_then(|h| h.get(&id).cloned().flatten())
        .is_some_and(|t| t.elapsed() < within)
}

/// This node's answer to [`Rpc::Capabilities`].
pub(crate) fn answer() -> std::result::Result<Capabilities, String> {
    static MINE: std::sync::OnceLock<Capabilities> = std::sync::OnceLock::new();
    let reg = Registry::global().map_err(|e| e.to_string())?;
    Ok(MINE.get_or_init(|| reg.capabilities()).clone())
}

impl Compat {
    pub(crate) fn new(id: u64, pool: Pool) -> Result<Compat> {
        let registry = Registry::global()?;
        Ok(Compat {
            id,
            pool,
            registry,
            mine: registry.capabilities(),
            peers: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            uniform: Mutex::new(None),
        })
    }

    /// Asks one member what it knows and caches the answer (kept as it was
    /// if the member cannot be reached).
    async fn ask(&self, id: u64, addr: &str) {
        self.asked.lock().insert(id, (Instant::now(), false));
        let answered = self.ask_once(id, addr).await;
        self.asked.lock().insert(id, (Instant::now(), answered));
    }

    async fn ask_once(&self, id: u64, addr: &str) -> bool {
        let body = match encode(&Rpc::Capabilities) {
            Ok(b) => b,
            Err(_) => return false,
        };
        let known = match self.pool.call(id, addr, body, ASK_TIMEOUT).await {
            Ok(reply) => match decode::<std::result::Result<Capabilities, String>>(&reply) {
                Ok(Ok(c)) => Known::Caps(c),
                _ => return false,
            },
            Err(TransportError::Remote(e)) if e.starts_with("bad request") => {
                if self.warned.lock().insert((id, 0)) {
                    tracing::warn!(
                        node = id,
                        "node {id} does not answer the capability exchange: it runs an older \
                         catga, so the leader cannot check that it knows the messages proposed; \
                         finish the upgrade before sending new message types"
                    );
                }
                Known::Unsupported
            }
            Err(_) => return false,
        };
        if let Known::Caps(c) = &known
            && c.fingerprint != self.mine.fingerprint
            && self.warned.lock().insert((id, c.fingerprint))
        {
            tracing::info!(
                node = id,
                theirs = format_args!("{:016x}", c.fingerprint),
                ours = format_args!("{:016x}", self.mine.fingerprint),
                "node {id} runs a program with other messages or states than this node \
                 (a rolling upgrade in progress?)"
            );
        }
        let differs = !matches!(&known, Known::Caps(c) if c.fingerprint == self.mine.fingerprint);
        let mut peers = self.peers.lock();
        peers.insert(id, known);
        if differs {
            // after the insert, under the same lock as `uniform`'s look
            *self.uniform.lock() = None;
        }
        true
    }

    /// Whether every other member of the current membership is known to
    /// run this node's program (same fingerprint): then each of them
    /// applies whatever this node applies.
    fn uniform(&self, raft: &Raft) -> bool {
        let m = raft.metrics();
        let (key, others): (Option<super::LogId>, Vec<u64>) = {
            let m = m.borrow_watched();
            let key = *m.membership_config.log_id();
            if *self.uniform.lock() == Some(key) {
                return true;
            }
            let others = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.id)
                .collect();
            (key, others)
        };
        let peers = self.peers.lock();
        let same = others.iter().all(|id| {
            matches!(peers.get(id), Some(Known::Caps(c)) if c.fingerprint == self.mine.fingerprint)
        });
        if same {
            // under the peers lock: an answer that differs, inserted after
            // this look, clears it after this store
            *self.uniform.lock() = Some(key);
        }
        same
    }

    /// Asks these members now; one that did not answer its last question,
    /// or is being asked, at most every [`REASK_AFTER`].
    async fn ask_now(&self, others: &BTreeMap<u64, String>, ids: Vec<u64>) {
        let now = Instant::now();
        let due: Vec<(u64, &String)> = {
            let mut asked = self.asked.lock();
            ids.into_iter()
                .filter(|id| *id != self.id)
                .filter_map(|id| others.get_key_value(&id).map(|(i, a)| (*i, a)))
                .filter(|(id, _)| {
                    let due = match asked.get(id) {
                        Some((t, answered)) => *answered || now.duration_since(*t) >= REASK_AFTER,
                        None => true,
                    };
                    if due {
                        // concurrent writes wait for this answer's cache
                        asked.insert(*id, (now, false));
                    }
                    due
                })
                .collect()
        };
        if !due.is_empty() {
            futures::future::join_all(due.iter().map(|(id, a)| self.ask(*id, a))).await;
        }
    }

    /// The members other than this node, with their addresses.
    fn others(&self, raft: &Raft) -> BTreeMap<u64, String> {
        let m = raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Re-asks every member (run every [`REFRESH`] by the node).
    pub(crate) async fn refresh(&self, raft: &Raft) {
        let others = self.others(raft);
        futures::future::join_all(others.iter().map(|(id, addr)| self.ask(*id, addr))).await;
    }

    /// Asks the members that never answered (run every [`REASK_AFTER`] by
    /// the node): a write does not wait for one Raft has not heard from,
    /// so this is how the leader learns what it runs once it is back.
    pub(crate) async fn ask_unanswered(&self, raft: &Raft) {
        let others = self.others(raft);
        let ids = self.never_answered(&others);
        self.ask_now(&others, ids).await;
    }

    fn never_answered(&self, others: &BTreeMap<u64, String>) -> Vec<u64> {
        let peers = self.peers.lock();
        others
            .keys()
            .filter(|id| !peers.contains_key(id))
            .copied()
            .collect()
    }

    /// The members known not to apply `name` (this node included).
    fn lacking(&self, others: &BTreeMap<u64, String>, name: &str, event: bool) -> Vec<u64> {
        let mut out = Vec::new();
        if !self.registry.applies(name, event) {
            out.push(self.id);
        }
        let peers = self.peers.lock();
        for id in others.keys() {
            if let Some(Known::Caps(c)) = peers.get(id)
                && c.fingerprint != self.mine.fingerprint
                && !c.applies(name)
            {
                out.push(*id);
            }
        }
        out
    }

    /// On the leader, before proposing: `Err` lists the members (this
    /// node included) that cannot apply an entry named `name`.
    pub(crate) async fn check(
        &self,
        raft: &Raft,
        name: &str,
        event: bool,
    ) -> std::result::Result<(), Vec<u64>> {
        if self.registry.applies(name, event) && self.uniform(raft) {
            return Ok(());
        }
        let others = self.others(raft);
        // only those Raft hears from: asking one that is stopped would hold
        // this write for the whole ASK_TIMEOUT (the background loop asks it)
        let mut never_answered = self.never_answered(&others);
        never_answered.retain(|id| heard_lately(raft, *id));
        self.ask_now(&others, never_answered).await;
        let lacking = self.lacking(&others, name, event);
        if lacking.is_empty() {
            return Ok(());
        }
        // they may have been upgraded since they were last asked
        self.ask_now(&others, lacking).await;
        let lacking = self.lacking(&others, name, event);
        if lacking.is_empty() {
            Ok(())
        } else {
            Err(lacking)
        }
    }
}
