//! The node's API over its mediator (`mediator/`): who the members are,
//! what this node says about itself, a query sent to a chosen node, and a
//! best-effort broadcast. Thin: the mediator does the work.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{Node, Role};
use crate::error::Result;
use crate::mediator::{Delivery, Member, MemberRole};
use crate::message::{BoxFuture, Consistency, Publishable, Queryable, Route};

impl Node {
    /// Every member of the cluster as this node sees it: its id, address,
    /// role, liveness, load and metadata, sorted by id; members removed
    /// lately are listed as [`Liveness::Left`](crate::members::Liveness::Left).
    ///
    /// On a node started with [`discovery`](crate::ClusterBuilder::discovery),
    /// liveness comes from discovery too: suspect once its lease expired or
    /// it unregistered (a member is only suspect: the membership decides
    /// when it is removed), alive while its entry is in the store and it
    /// answers pings; load and metadata are what it registered (plus its
    /// pings' metadata).
    /// Otherwise liveness comes from the mediator's own heartbeat (each node
    /// pings every member four times a second) and from calls that failed;
    /// load and metadata from the last ping's answer.
    pub fn members(&self) -> Vec<Member> {
        self.mediator().members(self.discovery_view())
    }

    /// This node, as [`Node::members`] lists it.
    pub fn info(&self) -> Member {
        let health = self.health();
        let me = self.id();
        let role = match health.role {
            Role::Leader => MemberRole::Leader,
            Role::Learner => MemberRole::Learner,
            _ if !health.members.contains(&me) && !health.learners.contains(&me) => {
                MemberRole::Removed
            }
            _ => MemberRole::Follower,
        };
        let addr = self
            .raft()
            .member_addrs()
            .remove(&me)
            .unwrap_or_else(|| self.local_addr().to_string());
        self.mediator().me(role, addr)
    }

    /// Where users reach this node's HTTP API, as set with
    /// [`ClusterBuilder::api_addr`](crate::ClusterBuilder::api_addr) and
    /// shown in [`Member::api_addr`].
    pub fn api_addr(&self) -> Option<String> {
        self.mediator().api_addr()
    }

    /// Sets what this node says about itself in [`Member::metadata`] (other
    /// nodes see it after their next ping, within a second).
    pub fn set_metadata(&self, metadata: BTreeMap<String, String>) {
        self.mediator().set_metadata(metadata);
    }

    /// Runs `query` on node `node` and returns its handler's answer (a
    /// handler's own error is inside it, typed, as with
    /// [`send`](Node::send)). Stateful queries read that node's copy of the
    /// state (with the query's declared consistency); state-less ones run
    /// there. The route declared on the query's type does not apply.
    ///
    /// Errors: [`Error::NodeUnavailable`](crate::Error::NodeUnavailable)
    /// when `node` is not a member, has left, or could not be reached or
    /// died before answering — the query is never re-sent to another node;
    /// [`Error::Timeout`](crate::Error::Timeout) when it did not answer
    /// within the node's request timeout; [`Error::Apply`](crate::Error::Apply)
    /// when it could not run the query (e.g. `UnknownMessage`: it runs
    /// another version of the program).
    pub fn send_to<M>(&self, node: u64, query: M) -> BoxFuture<'_, Result<M::Output>>
    where
        M: Queryable,
        M::Output: crate::RemoteAnswer,
    {
        Box::pin(async move {
            let consistency = match M::ROUTE {
                Route::Query { consistency, .. } => consistency,
                _ => Consistency::Local,
            };
            if node == self.id() {
                return self.run_here(query, consistency).await;
            }
            let deadline = Instant::now() + self.request_timeout();
            let payload = crate::codec::encode_user(M::NAME, &query)?;
            let bytes = self
                .mediator()
                .query_on(node, M::NAME, payload, consistency, deadline)
                .await?;
            Ok(crate::codec::decode_user(M::NAME, &bytes)?)
        })
    }

    /// Runs `event`'s handlers on every member this node knows of (see
    /// [`members`](Node::members); suspect ones too) now, without the log: a
    /// best-effort fan-out that returns each member's outcome (how many
    /// handlers ran there, or why it could not run them). A member that is
    /// down misses the event for good; nothing is retried or stored.
    ///
    /// Compare [`publish`](Node::publish): durable (through the Raft log),
    /// delivered at least once to every node, including nodes that are down
    /// now (when they come back). Use `publish` for what must happen
    /// everywhere (and deduplicate with [`EventContext::log_index`](crate::EventContext::log_index));
    /// use `broadcast` for what only matters now (invalidate a cache, reload
    /// a setting) or when you need to know who got it. Handlers run by a
    /// broadcast see `ctx.log_index() == 0`.
    ///
    /// The outer error is for the event itself (it does not encode).
    pub fn broadcast<E: Publishable>(&self, event: E) -> BoxFuture<'_, Result<Vec<Delivery>>> {
        Box::pin(async move {
            let payload = crate::codec::encode_user(E::NAME, &event)?;
            Ok(self.mediator().broadcast(E::NAME, payload).await)
        })
    }
}
