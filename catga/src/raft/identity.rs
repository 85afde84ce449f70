//! Who this node is across restarts, and who its peers were: the cluster id
//! and the incarnation of this data dir (file `identity`), the incarnation
//! of every peer this node has ever talked to (file `peers`), and the voters
//! it saw removed from the membership (file `removed`).
//!
//! The transport hands each peer's identity to [`Identity::check`] during
//! the handshake. A peer whose incarnation changed had its data dir wiped
//! or replaced: it lost its log and its vote, so letting it vote could elect
//! a leader without the acknowledged writes. It is refused, on both sides of
//! the connection, until an operator removes it (see README, "Replacing a
//! node"). A peer of another cluster is refused the same way, and so is a
//! voter this node saw removed (its id is never reused: it would come back
//! with a stale log and a membership that still lists it, and pass for a
//! replica).
//!
//! Both files are small text files, written atomically (temp file, fsync,
//! rename, fsync of the directory) and only when something changes: on the
//! first start, and when a peer is seen for the first time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::transport::{Ident, PeerCheck};

const IDENTITY: &str = "identity";
const PEERS: &str = "peers";
const REMOVED: &str = "removed";
/// Locked (`flock`) while a process uses the data dir: the lock goes with
/// the process, however it dies, so holding it proves that no earlier
/// process still runs on this dir.
const LOCK: &str = "lock";

/// This node's identity and its record of its peers.
pub(crate) struct Identity {
    node_id: u64,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The data dir's lock, if this process could take it (see [`LOCK`]).
    lock: Option<std::fs::File>,
    /// Set while some peer refuses this node: read on every local query,
    /// so an atomic beside the lock.
    refused_flag: AtomicBool,
    refusals: Mutex<Refusals>,
    /// Bumped whenever `refusals` changes (for `Node::stopped` and writes
    /// waiting for a leader).
    refusals_changed: tokio::sync::watch::Sender<u64>,
}

/// A peer's refusal of this node, as it said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The refusing peer.
    pub(crate) by: u64,
    /// Its reason (it says what to do).
    pub(crate) reason: String,
}

#[derive(Default)]
struct Refusals {
    /// The standing refusal of each peer that refused this node (cleared
    /// when that peer accepts it again).
    by: BTreeMap<u64, String>,
    /// When a refusal between this node and each peer (either way) was
    /// last logged.
    logged: BTreeMap<u64, Instant>,
}

/// A refusal that keeps happening is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

struct Inner {
    /// 0 until known (a node started to join an existing cluster).
    cluster: u64,
    incarnation: u64,
    peers: BTreeMap<u64, u64>,
    /// Peers refused since this process started because they came back
    /// with another data dir: whatever their id names in the membership is
    /// gone (not kept on disk: the `peers` file refuses them again).
    replaced: BTreeSet<u64>,
    /// Voters this node saw leave the membership (file `removed`).
    removed: BTreeSet<u64>,
    /// Every voter of the memberships this process applied.
    seen_voters: BTreeSet<u64>,
}

/// The cluster id of a static cluster: the same on every member that is
/// given the same secret and member ids, without any communication.
pub(crate) fn static_cluster_id(secret: &[u8], members: impl Iterator<Item = u64>) -> u64 {
    let mut h = Sha256::new();
    h.update(b"catga cluster v1");
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret);
    for id in members {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

fn bad(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn write_atomically(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Takes the data dir's lock without waiting. Failing to take it is not an
/// error: the lock only lets a restarted node skip a wait (see
/// `Identity::sole_user`), so a filesystem without locks, or a second node
/// on this dir in the same process, just does without.
fn take_lock(dir: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .ok()?;
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(e) => {
            tracing::debug!(error = %e, dir = %dir.display(), "the data dir lock is held elsewhere");
            None
        }
    }
}

fn hex(s: &str, path: &Path) -> io::Result<u64> {
    u64::from_str_radix(s, 16).map_err(|e| bad(path, format!("`{s}`: {e}")))
}

impl Identity {
    /// Loads the identity of the data dir `dir`, or creates it (a new
    /// incarnation) when the dir has none. `cluster` is the static cluster's
    /// id, or `None` for a node that joins an existing cluster (it adopts the
    /// id of the first member that contacts it).
    pub(crate) fn open(dir: &Path, node_id: u64, cluster: Option<u64>) -> io::Result<Identity> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(IDENTITY);
        let (cluster, incarnation) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut fields = BTreeMap::new();
                for line in text.lines() {
                    if let Some((k, v)) = line.split_once(' ') {
                        fields.insert(k.trim(), v.trim());
                    }
                }
                let get = |k: &str| {
                    fields
                        .get(k)
                        .copied()
                        .ok_or_else(|| bad(&path, format!("no `{k}` line")))
                };
                let owner: u64 = get("node")?
                    .parse()
                    .map_err(|e| bad(&path, format!("node: {e}")))?;
                if owner != node_id {
                    return Err(bad(
                        &path,
                        format!(
                            "this data dir belongs to node {owner}, not node {node_id}; \
                             give each node its own data dir"
                        ),
                    ));
                }
                (
                    hex(get("cluster")?, &path)?,
                    hex(get("incarnation")?, &path)?,
                )
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let incarnation = loop {
                    let i = rand::random::<u64>();
                    if i != 0 {
                        break i;
                    }
                };
                let cluster = cluster.unwrap_or(0);
                write_atomically(dir, IDENTITY, &identity_text(node_id, cluster, incarnation))?;
                (cluster, incarnation)
            }
            Err(e) => return Err(e),
        };
        let peers_path = dir.join(PEERS);
        let mut peers = BTreeMap::new();
        match std::fs::read_to_string(&peers_path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let (id, inc) = line
                        .split_once(' ')
                        .ok_or_else(|| bad(&peers_path, format!("bad line `{line}`")))?;
                    let id: u64 = id
                        .trim()
                        .parse()
                        .map_err(|e| bad(&peers_path, format!("`{line}`: {e}")))?;
                    peers.insert(id, hex(inc.trim(), &peers_path)?);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let removed_path = dir.join(REMOVED);
        let removed = match std::fs::read_to_string(&removed_path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    l.trim()
                        .parse::<u64>()
                        .map_err(|e| bad(&removed_path, format!("`{l}`: {e}")))
                })
                .collect::<io::Result<BTreeSet<u64>>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        Ok(Identity {
            node_id,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                cluster,
                incarnation,
                peers,
                replaced: Default::default(),
                removed,
                seen_voters: Default::default(),
            }),
            lock: take_lock(dir),
            refused_flag: AtomicBool::new(false),
            refusals: Mutex::new(Refusals::default()),
            refusals_changed: tokio::sync::watch::channel(0).0,
        })
    }

    /// A standing refusal of this node by a peer, if any (the lowest peer
    /// id's, so that the answer is stable).
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        if !self.refused_flag.load(Ordering::Acquire) {
            return None;
        }
        self.refusals
            .lock()
            .by
            .iter()
            .next()
            .map(|(by, reason)| Refusal {
                by: *by,
                reason: reason.clone(),
            })
    }

    /// The peers that stand by a refusal of this node.
    pub(crate) fn refusers(&self) -> BTreeSet<u64> {
        if !self.refused_flag.load(Ordering::Acquire) {
            return BTreeSet::new();
        }
        self.refusals.lock().by.keys().copied().collect()
    }

    /// The peers this node refused since it started because they came
    /// back with another data dir (see `Inner::replaced`).
    pub(crate) fn replaced_peers(&self) -> BTreeSet<u64> {
        self.inner.lock().replaced.clone()
    }

    /// Notes an applied (so committed) membership: a voter of an earlier
    /// one that is no node of it (neither voter nor learner) was removed,
    /// and is refused from now on, across restarts. A learner that leaves
    /// is not: the leader gives up on a new node that does not catch up,
    /// and it may be added again once it runs; a voter turned learner (an
    /// even voter count) is still a node. Fails on a disk error (the
    /// removal is noted again with the next membership).
    pub(crate) fn observe_membership(
        &self,
        voters: &BTreeSet<u64>,
        nodes: &BTreeSet<u64>,
    ) -> io::Result<()> {
        let mut g = self.inner.lock();
        let gone: Vec<u64> = g
            .seen_voters
            .iter()
            .copied()
            .filter(|v| *v != self.node_id && !nodes.contains(v) && !g.removed.contains(v))
            .collect();
        g.seen_voters.extend(voters.iter().copied());
        if gone.is_empty() {
            return Ok(());
        }
        g.removed.extend(gone.iter().copied());
        if let Err(e) = self.persist_removed(&g) {
            for id in &gone {
                g.removed.remove(id);
            }
            return Err(e);
        }
        drop(g);
        for id in gone {
            tracing::info!(
                node = id,
                "node {id} was removed from the membership: it is refused from now on (ids are \
                 never reused)"
            );
        }
        Ok(())
    }

    /// A receiver that sees every change of the refusals.
    pub(crate) fn watch_refusals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.refusals_changed.subscribe()
    }

    /// Whether this process holds the data dir's lock: no other process
    /// (a previous life of this node that still runs) uses it.
    pub(crate) fn sole_user(&self) -> bool {
        self.lock.is_some()
    }

    /// The cluster id this data dir belongs to (0: not known yet).
    pub(crate) fn cluster(&self) -> u64 {
        self.inner.lock().cluster
    }

    /// This data dir's incarnation (new whenever the dir is created).
    pub(crate) fn incarnation(&self) -> u64 {
        self.inner.lock().incarnation
    }

    /// Records `cluster` as this data dir's cluster, if it has none yet.
    /// Fails when it already belongs to another cluster, or on a disk error.
    pub(crate) fn adopt(&self, cluster: u64) -> Result<(), String> {
        let mut g = self.inner.lock();
        if g.cluster == cluster {
            return Ok(());
        }
        if g.cluster != 0 {
            return Err(format!(
                "this data dir belongs to cluster {:016x}, not {cluster:016x}: clusters are \
                 never merged; give this node a fresh data dir and a new id to move it",
                g.cluster
            ));
        }
        g.cluster = cluster;
        if let Err(e) = self.persist_identity(&g) {
            g.cluster = 0;
            return Err(format!("cannot record the cluster id: {e}"));
        }
        tracing::info!(cluster = %format!("{cluster:016x}"), "joined cluster");
        Ok(())
    }

    fn persist_identity(&self, g: &Inner) -> io::Result<()> {
        write_atomically(
            &self.dir,
            IDENTITY,
            &identity_text(self.node_id, g.cluster, g.incarnation),
        )
    }

    fn persist_removed(&self, g: &Inner) -> io::Result<()> {
        let mut text = String::from("# voters removed from the cluster: refused for good\n");
        for id in &g.removed {
            text.push_str(&format!("{id}\n"));
        }
        write_atomically(&self.dir, REMOVED, &text)
    }

    fn persist_peers(&self, g: &Inner) -> io::Result<()> {
        let text: String = g
            .peers
            .iter()
            .map(|(id, inc)| format!("{id} {inc:016x}\n"))
            .collect();
        write_atomically(&self.dir, PEERS, &text)
    }
}

fn identity_text(node: u64, cluster: u64, incarnation: u64) -> String {
    format!(
        "# catga data dir identity: do not copy it to another node's data dir\n\
         node {node}\ncluster {cluster:016x}\nincarnation {incarnation:016x}\n"
    )
}

impl PeerCheck for Identity {
    fn local(&self) -> Option<Ident> {
        let g = self.inner.lock();
        Some(Ident {
            cluster: g.cluster,
            incarnation: g.incarnation,
        })
    }

    fn check(&self, peer: u64, ident: Option<Ident>) -> Result<(), String> {
        // A peer that announces no identity (a tool speaking the protocol)
        // proved the secret and is trusted as before.
        let Some(ident) = ident else { return Ok(()) };
        let mut g = self.inner.lock();
        if ident.cluster != 0 && g.cluster != 0 && ident.cluster != g.cluster {
            return Err(format!(
                "node {peer} belongs to another cluster (id {:016x}; this node's is {:016x}): \
                 clusters are never merged; check the peer addresses and data dirs",
                ident.cluster, g.cluster
            ));
        }
        if g.cluster == 0 && ident.cluster != 0 {
            g.cluster = ident.cluster;
            if let Err(e) = self.persist_identity(&g) {
                g.cluster = 0;
                return Err(format!("cannot record the cluster id: {e}"));
            }
            tracing::info!(cluster = %format!("{:016x}", ident.cluster), "joined cluster");
        }
        if g.removed.contains(&peer) {
            return Err(format!(
                "node {peer} was removed from this cluster, and an id is never reused (its log \
                 and membership are stale). Stop it; start the machine under a new id with a \
                 fresh data dir (`join_existing()`, then `add_node` on a member); see \
                 \"Replacing a node\" in the operations guide"
            ));
        }
        match g.peers.get(&peer).copied() {
            Some(known) if known == ident.incarnation => Ok(()),
            Some(known) => {
                g.replaced.insert(peer);
                Err(format!(
                    "node {peer} was a member with data dir incarnation {known:016x}, and this one is \
                 {:016x}: its data dir was wiped or replaced, so it lost its Raft log and must not \
                 vote. Remove node {peer} (`remove_node({peer})` on a member) and add the new \
                 machine under a new id (`join_existing()` + `add_node`); see \"Replacing a node\" \
                 in the README",
                    ident.incarnation
                ))
            }
            None => {
                g.peers.insert(peer, ident.incarnation);
                if let Err(e) = self.persist_peers(&g) {
                    g.peers.remove(&peer);
                    return Err(format!("cannot record node {peer}'s identity: {e}"));
                }
                Ok(())
            }
        }
    }

    fn refused_by(&self, peer: u64, reason: &str) {
        let mut g = self.refusals.lock();
        let new = g.by.get(&peer).map(String::as_str) != Some(reason);
        if new {
            g.by.insert(peer, reason.to_string());
            self.refused_flag.store(true, Ordering::Release);
        }
        let log = due(&mut g.logged, peer);
        drop(g);
        if log {
            tracing::error!(
                peer,
                "node {peer} refuses this node: {reason} (this node answers no queries and \
                 takes no writes while its peers refuse it; logged at most once a minute)"
            );
        }
        if new {
            self.refusals_changed.send_modify(|n| *n += 1);
        }
    }

    fn accepted_by(&self, peer: u64) {
        let mut g = self.refusals.lock();
        if g.by.remove(&peer).is_none() {
            return;
        }
        self.refused_flag.store(!g.by.is_empty(), Ordering::Release);
        drop(g);
        tracing::info!(peer, "node {peer} accepts this node again");
        self.refusals_changed.send_modify(|n| *n += 1);
    }

    fn log_refusal_now(&self, peer: u64) -> bool {
        due(&mut self.refusals.lock().logged, peer)
    }
}

/// Feeds every membership this node applied to
/// [`Identity::observe_membership`], until Raft stops. It wakes on changes
/// of the server metrics (memberships, roles: rare), and follows the
/// applied index only while a membership waits to be applied, not on every
/// write.
pub(crate) async fn record_removals(raft: super::Raft, identity: std::sync::Arc<Identity>) {
    use openraft::async_runtime::WatchReceiver;
    let mut server = raft.server_metrics();
    let mut done = None;
    loop {
        let (at, voters, nodes) = {
            let m = server.borrow_watched();
            let mem = m.membership_config.membership();
            let voters: BTreeSet<u64> = mem.voter_ids().collect();
            let nodes: BTreeSet<u64> = mem.nodes().map(|(id, _)| *id).collect();
            (m.membership_config.log_id().map(|l| l.index), voters, nodes)
        };
        if at != done {
            // only an applied membership is committed for good
            let mut data = raft.data_metrics();
            let applied = loop {
                let applied = data.borrow_watched().last_applied.map(|l| l.index);
                if at <= applied {
                    break true;
                }
                let newer = server
                    .borrow_watched()
                    .membership_config
                    .log_id()
                    .map(|l| l.index);
                if newer != at {
                    // superseded before it was applied: look at the new one
                    break false;
                }
                if data.changed().await.is_err() {
                    return;
                }
            };
            if !applied {
                continue;
            }
            if let Err(e) = identity.observe_membership(&voters, &nodes) {
                tracing::warn!(error = %e, "cannot record a removed node; retrying");
                // again within a second, or at the next membership change
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), server.changed()).await;
                continue;
            }
            done = at;
        }
        if server.changed().await.is_err() {
            return;
        }
    }
}

/// Whether a line about `peer` is due (none in the last minute); notes it.
fn due(logged: &mut BTreeMap<u64, Instant>, peer: u64) -> bool {
    let now = Instant::now();
    if logged
        .get(&peer)
        .is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY)
    {
        return false;
    }
    logged.insert(peer, now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(cluster: u64, incarnation: u64) -> Option<Ident> {
        Some(Ident {
            cluster,
            incarnation,
        })
    }

    #[test]
    fn refusals_stand_until_the_peer_accepts_and_are_logged_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert_eq!(id.refusal(), None);
        let mut changes = id.watch_refusals();
        id.refused_by(3, "wiped");
        id.refused_by(2, "wiped");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let r = id.refusal().unwrap();
        assert_eq!((r.by, r.reason.as_str()), (2, "wiped"));
        // the same refusal again changes nothing
        id.refused_by(2, "wiped");
        assert!(!changes.has_changed().unwrap());
        // refused_by logged each peer once: nothing more is due this minute
        assert!(!id.log_refusal_now(2));
        assert!(!id.log_refusal_now(3));
        assert!(id.log_refusal_now(4));
        assert!(!id.log_refusal_now(4));
        id.accepted_by(2);
        assert_eq!(id.refusal().map(|r| r.by), Some(3));
        id.accepted_by(3);
        assert_eq!(id.refusal(), None);
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn a_voter_seen_removed_is_refused_for_good_a_learner_given_up_on_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 1, Some(7)).unwrap();
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        for (peer, inc) in [(2, 20), (3, 30), (4, 40)] {
            assert!(id.check(peer, ident(7, inc)).is_ok());
        }
        id.observe_membership(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]))
            .unwrap();
        // learner 4 made no progress and was removed again: it may be
        // added again; voter 3 turned learner is still a node
        id.observe_membership(&set(&[1, 2]), &set(&[1, 2, 3]))
            .unwrap();
        assert!(id.check(4, ident(7, 40)).is_ok());
        assert!(id.check(3, ident(7, 30)).is_ok());
        // node 3 leaves the membership: refused, with what to do
        id.observe_membership(&set(&[1, 2]), &set(&[1, 2])).unwrap();
        let err = id.check(3, ident(7, 30)).unwrap_err();
        assert!(err.contains("removed") && err.contains("new id"), "{err}");
        assert!(id.check(2, ident(7, 20)).is_ok());
        drop(id);
        // across a restart too, before any membership is seen again
        let id = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert!(id.check(3, ident(7, 30)).is_err());
        assert!(id.check(4, ident(7, 40)).is_ok());
    }

    #[test]
    fn a_second_open_of_a_data_dir_does_not_get_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert!(first.sole_user());
        let second = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert!(!second.sole_user(), "two users of one data dir");
        drop(second);
        drop(first);
        assert!(Identity::open(dir.path(), 1, Some(7)).unwrap().sole_user());
    }

    #[test]
    fn a_peer_with_a_new_incarnation_is_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert!(id.check(2, ident(7, 100)).is_ok());
        assert!(id.check(2, ident(7, 100)).is_ok());
        let err = id.check(2, ident(7, 101)).unwrap_err();
        assert!(err.contains("wiped"), "{err}");
        assert_eq!(id.replaced_peers(), [2].into());
        let mine = id.local();
        drop(id);
        // the record survives a restart, and so does this node's incarnation
        let id = Identity::open(dir.path(), 1, Some(7)).unwrap();
        assert_eq!(id.local(), mine);
        assert!(id.check(2, ident(7, 101)).is_err());
        assert!(id.check(2, ident(7, 100)).is_ok());
    }

    #[test]
    fn another_cluster_is_refused_and_a_joining_node_adopts_the_first_it_meets() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 4, None).unwrap();
        assert_eq!(id.local().unwrap().cluster, 0);
        assert!(id.check(1, ident(7, 1)).is_ok());
        assert_eq!(id.local().unwrap().cluster, 7);
        assert!(
            id.check(2, ident(8, 2))
                .unwrap_err()
                .contains("another cluster")
        );
        drop(id);
        let id = Identity::open(dir.path(), 4, None).unwrap();
        assert_eq!(id.local().unwrap().cluster, 7, "the adopted id is kept");
    }

    #[test]
    fn adopting_a_cluster_id_happens_once_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::open(dir.path(), 3, None).unwrap();
        assert_eq!(id.cluster(), 0);
        id.adopt(9).unwrap();
        id.adopt(9).unwrap();
        assert!(id.adopt(10).unwrap_err().contains("never merged"));
        drop(id);
        let id = Identity::open(dir.path(), 3, None).unwrap();
        assert_eq!(id.cluster(), 9);
        assert!(id.check(1, ident(11, 1)).is_err());
    }

    #[test]
    fn a_data_dir_of_another_node_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(Identity::open(dir.path(), 1, Some(7)).unwrap());
        let err = Identity::open(dir.path(), 2, Some(7)).err().unwrap();
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
    }

    #[test]
    fn static_cluster_ids_depend_on_secret_and_members() {
        let a = static_cluster_id(b"s", [1, 2, 3].into_iter());
        assert_eq!(a, static_cluster_id(b"s", [1, 2, 3].into_iter()));
        assert_ne!(a, static_cluster_id(b"t", [1, 2, 3].into_iter()));
        assert_ne!(a, static_cluster_id(b"s", [1, 2, 4].into_iter()));
    }
}
