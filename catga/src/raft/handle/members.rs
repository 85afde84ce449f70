//! The membership and this node's standing in it, for the membership
//! reconciler (`node/selfform`) and the node's health: the view of voters,
//! learners and lag; the changes the leader makes itself; the data dir's
//! identity and the peers' refusals of this node (`identity.rs`).

use std::collections::{BTreeMap, BTreeSet};

use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;

use super::super::identity::Refusal;
use super::super::{Status, leader};
use super::{RaftHandle, redirect_result};
use crate::error::{Error, Result};

/// The membership as the leader sees it, in plain values (for the
/// membership reconciler in `node/`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MembershipView {
    /// This node leads (and may change the membership).
    pub(crate) leader: bool,
    pub(crate) voters: BTreeMap<u64, String>,
    pub(crate) learners: BTreeMap<u64, String>,
    /// How many entries each node is behind the leader's last log index
    /// (leader only; a node with nothing replicated yet counts everything).
    pub(crate) lag: BTreeMap<u64, u64>,
}

impl RaftHandle {
    /// Whether this node has no Raft state at all (no membership, no log,
    /// no vote): only such a node may ever initialize a cluster.
    pub(crate) async fn pristine(&self) -> Result<bool> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        Ok(!initialized && m.last_log_index.is_none() && m.current_term == 0)
    }

    /// The cluster id of this data dir (0: none yet) and its incarnation.
    pub(crate) fn data_identity(&self) -> (u64, u64) {
        (self.identity.cluster(), self.identity.incarnation())
    }

    /// No other process uses this data dir (see `identity.rs`, `LOCK`).
    pub(crate) fn data_dir_exclusive(&self) -> bool {
        self.identity.sole_user()
    }

    /// A peer's standing refusal of this node, and a receiver of changes
    /// (see `identity.rs`).
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.identity.refusal()
    }

    pub(crate) fn watch_refusals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.identity.watch_refusals()
    }

    /// Why this node is no replica, if its peers refuse it (see
    /// `identity.rs`): a peer refused it and no leader accepts it. A node
    /// that hears from a leader serves, whatever another peer says. An
    /// atomic load unless a peer refused it.
    pub(crate) fn refused(&self) -> Option<String> {
        let refusal = self.identity.refusal()?;
        self.refused_given(&self.status(), refusal)
    }

    /// [`Self::refused`], given this node's status and a standing refusal.
    pub(crate) fn refused_given(&self, s: &Status, r: Refusal) -> Option<String> {
        if s.leader_confirmed {
            return None;
        }
        let id = self.id;
        Some(format!(
            "node {id} is refused by its peers (node {}: {}). It holds no replica of the \
             cluster's state: it answers no queries and takes no writes. Stop it; remove \
             id {id} from the cluster (`remove_node({id})` on a member, or the admin route) \
             and start this machine under a new id with a fresh data dir \
             (`join_existing()`, then `add_node` on a member)",
            r.by, r.reason
        ))
    }

    /// Whether this node's state may answer reads: not when its Raft
    /// stopped (the state no longer follows the log) or its peers refuse
    /// it (its state is not the cluster's: empty, or another cluster's).
    pub(crate) fn readable(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(Error::Raft(format!(
                "this node stopped ({e}); it answers no reads because its state is no \
                 longer kept up to date: restart it"
            )));
        }
        if let Some(why) = self.refused() {
            return Err(Error::ClusterMismatch(why));
        }
        Ok(())
    }

    /// The peers that stand by a refusal of this node (`identity.rs`).
    pub(crate) fn refusers(&self) -> BTreeSet<u64> {
        self.identity.refusers()
    }

    /// Peers refused for coming back with another data dir (`identity.rs`).
    pub(crate) fn replaced_peers(&self) -> BTreeSet<u64> {
        self.identity.replaced_peers()
    }

    /// Records the cluster id this (pristine) data dir joins.
    pub(crate) fn adopt_cluster(&self, cluster: u64) -> Result<()> {
        self.identity.adopt(cluster).map_err(Error::ClusterMismatch)
    }

    /// Initializes a new cluster with these voters (id → address); only
    /// for a pristine node, once (see `node/selfform`).
    pub(crate) async fn initialize(&self, voters: BTreeMap<u64, String>) -> Result<()> {
        let members: BTreeMap<u64, BasicNode> = voters
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(format!("initialize: {e}")))
    }

    /// The membership and, on the leader, each node's replication lag.
    pub(crate) fn membership(&self) -> MembershipView {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let addr = |id: &u64| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<u64, String> =
            membership.voter_ids().map(|id| (id, addr(&id))).collect();
        let learners = membership.learner_ids().map(|id| (id, addr(&id))).collect();
        let last = m.last_log_index.map(|l| l + 1).unwrap_or(0);
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(peer, matched)| {
                        let matched = matched.map(|l| l.index + 1).unwrap_or(0);
                        (*peer, last.saturating_sub(matched))
                    })
                    .collect()
            })
            .unwrap_or_default();
        MembershipView {
            leader: m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader,
            voters,
            learners,
            lag,
        }
    }

    /// Every member's (voters' and learners') id and address.
    pub(crate) fn member_addrs(&self) -> BTreeMap<u64, String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// On the leader: adds `id` as a learner (no waiting for it to catch up).
    pub(crate) async fn add_learner_here(&self, id: u64, addr: String) -> Result<()> {
        redirect_result(leader::add_learner(&self.raft, id, addr).await)
    }

    /// On the leader: makes learner `id` a voter.
    pub(crate) async fn promote_here(&self, ids: Vec<u64>) -> Result<()> {
        redirect_result(leader::promote(&self.raft, ids).await)
    }

    /// On the leader: removes `id` from the membership.
    pub(crate) async fn remove_here(&self, id: u64) -> Result<()> {
        redirect_result(leader::remove_node(&self.raft, id, self.voters).await)
    }

    /// On the leader: makes voter `id` a learner (`retain`: it keeps
    /// receiving the log, so it can be promoted again at once).
    pub(crate) async fn demote_here(&self, id: u64) -> Result<()> {
        let set = [id].into_iter().collect();
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(set), true)
            .await
            .map(|_| ())
            .map_err(|e| Error::Membership(format!("demoting node {id}: {e}")))
    }
}
