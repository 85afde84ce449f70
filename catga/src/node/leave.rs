//! Leaving the cluster for good ([`Node::leave`]), and the weak handle the
//! discovery tasks hold (they must not keep a node alive).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Node, NodeInner, selfform};
use crate::error::{Error, Result};

/// A handle that does not keep the node alive.
#[derive(Clone)]
pub(crate) struct WeakNode(Weak<NodeInner>);

impl WeakNode {
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl Node {
    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// The commands and publishes this handle has in flight (the load a
    /// discovered node reports).
    pub(crate) fn in_flight(&self) -> usize {
        self.inner.in_flight.lock().len()
    }

    pub(super) fn set_selfform(&self, sf: selfform::SelfForming) {
        let _ = self.inner.selfform.set(sf);
    }

    /// Marks this node as waiting for its discovery store (a member that
    /// started while the store was down); the token stops the wait.
    pub(super) fn set_selfform_pending(&self, why: String) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        *self.inner.selfform_pending.lock() = Some((token.clone(), why));
        token
    }

    /// The late registration's end: sets `sf` unless the node was shut down
    /// meanwhile (then `sf` is handed back, to be stopped).
    pub(super) fn finish_selfform(
        &self,
        sf: selfform::SelfForming,
    ) -> Option<selfform::SelfForming> {
        let mut pending = self.inner.selfform_pending.lock();
        match pending.take() {
            Some((token, _)) if !token.is_cancelled() => {
                let _ = self.inner.selfform.set(sf);
                None
            }
            _ => Some(sf),
        }
    }

    /// Removes node `id` from the cluster for good, as the admin route
    /// does: on a node started with `.discovery(..)` the id is first
    /// recorded as removed in the store (as [`Node::leave`] does), so that
    /// the reconciler never adds it back while its old process still
    /// heartbeats; then [`Node::remove_node`]. Fails, having changed
    /// nothing, if the store cannot record the removal.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn remove_for_good(&self, id: u64) -> Result<()> {
        if let Some(sf) = self.inner.selfform.get() {
            sf.mark_removed(id).await?;
        } else if self.inner.selfform_pending.lock().is_some() {
            return Err(Error::NotNow(format!(
                "cannot remove node {id} yet: the discovery store has been unreachable since \
                 this node started, and the removal must be recorded there (or the id could be \
                 re-added while its process still runs); retry once the store is back"
            )));
        }
        self.remove_node(id).await
    }

    /// Leaves the cluster for good: records the id as removed (a node
    /// started with `.discovery(..)`), removes it from the membership
    /// through the leader (a leader removing itself steps down once the
    /// change is committed), then unregisters it and shuts it down. The id
    /// is never used again. The voters left stay odd, as with
    /// [`Node::remove_node`]. Fails, having changed nothing, if the discovery
    /// store cannot record the removal (retry when it is back).
    ///
    /// ```no_run
    /// # async fn f(node: catga::Node) -> catga::Result<()> {
    /// node.leave().await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave(&self) -> Result<()> {
        let timeout = self.inner.request_timeout.max(Duration::from_secs(5));
        let raft = &self.inner.raft;
        let me = raft.id();
        if let Some(sf) = self.inner.selfform.get() {
            sf.mark_removed(me).await?;
        } else if self.inner.selfform_pending.lock().is_some() {
            // the removal must be recorded, so the id is never re-added
            return Err(Error::NotNow(
                "cannot leave yet: the discovery store has been unreachable since this node \
                 started, and the removal must be recorded there (or this id could be re-added \
                 later with an empty log); the node stays a member, call leave again once the \
                 store is back"
                    .into(),
            ));
        }
        let view = raft.membership();
        if view.voters.contains_key(&me) || view.learners.contains_key(&me) {
            if view.voters.len() == 1 && view.voters.contains_key(&me) {
                return Err(Error::Membership(
                    "the last voter cannot leave: add another node first, or shut it down".into(),
                ));
            }
            // the leader waits out another change in progress, and the
            // call follows leader changes; a refusal (`Membership`) is final
            raft.remove_node(me, timeout).await?;
        }
        if let Some(sf) = self.inner.selfform.get() {
            sf.stop(true).await?;
        }
        self.shutdown().await;
        Ok(())
    }
}
