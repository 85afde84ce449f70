//! The safe bootstrap of a discovered cluster, on a pristine node only:
//! wait until `bootstrap_expect` nodes of the cluster name are seen and the
//! set has stayed the same for a margin; if any of them (or the store's
//! `cluster-id` record) says a cluster exists, join it; otherwise the node
//! with the lowest id creates the `cluster-id` record (`SET NX`: exactly one
//! writer wins) and only the winner initializes Raft, with the lowest ids
//! as voters. Everyone else is added by the leader's reconciler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Settings, hex, open_watch, parse_hex, published_cluster};
use crate::discovery::{Discovery, MemberEvent, NodeInfo};
use crate::node::WeakNode;

/// What the formation decides from what it sees.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Keep watching.
    Wait,
    /// A cluster exists (a seen node belongs to it): adopt its id and wait
    /// to be added.
    Join(u64),
    /// This node is the lowest of a stable set: try to initialize, with these
    /// voters.
    Initialize(BTreeMap<u64, String>),
}

/// The pure rule: `seen` are the nodes of the cluster name (this one
/// included), stable for `stable_for`.
pub(super) fn decide(
    me: u64,
    seen: &BTreeMap<u64, NodeInfo>,
    stable_for: Duration,
    s: &Settings,
) -> Decision {
    if let Some(c) = seen.values().map(published_cluster).find(|c| *c != 0) {
        return Decision::Join(c);
    }
    if seen.len() < s.bootstrap_expect || stable_for < s.margin() || !seen.contains_key(&me) {
        return Decision::Wait;
    }
    if seen.keys().next() != Some(&me) {
        return Decision::Wait;
    }
    let voters = seen
        .values()
        .take(s.bootstrap_expect.min(s.voters))
        .map(|n| (n.id, n.raft_addr.clone()))
        .collect();
    Decision::Initialize(voters)
}

pub(super) async fn run(
    node: WeakNode,
    discovery: Arc<dyn Discovery>,
    s: Settings,
    stop: CancellationToken,
) {
    let Some(mut watch) = open_watch(&discovery, &stop).await else {
        return;
    };
    let mut seen: BTreeMap<u64, NodeInfo> = BTreeMap::new();
    let mut changed_at = Instant::now();
    let tick = (s.margin() / 4).max(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = watch.next() => match ev {
                Some(MemberEvent::Joined(n)) => {
                    seen.insert(n.id, n);
                    changed_at = Instant::now();
                }
                Some(MemberEvent::Updated(n)) => {
                    seen.insert(n.id, n);
                }
                Some(MemberEvent::Left { id, .. }) => {
                    seen.remove(&id);
                    changed_at = Instant::now();
                }
                None => match open_watch(&discovery, &stop).await {
                    Some(w) => {
                        watch = w;
                        seen.clear();
                        changed_at = Instant::now();
                    }
                    None => return,
                },
            },
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(node) = node.upgrade() else { return };
        let raft = node.raft();
        let (cluster, _) = raft.data_identity();
        match raft.pristine().await {
            Ok(true) if cluster == 0 => {}
            // contacted by a leader, or adopted: nothing left to form
            _ => return,
        }
        match discovery.read_record("cluster-id").await {
            Ok(Some(v)) => {
                if let Ok(c) = parse_hex("cluster-id", &v)
                    && let Err(e) = raft.adopt_cluster(c)
                {
                    tracing::error!(error = %e, "cannot join the cluster");
                }
                return;
            }
            Ok(None) => {}
            // the store is down: bootstrapping needs it, wait
            Err(_) => continue,
        }
        match decide(raft.id(), &seen, changed_at.elapsed(), &s) {
            Decision::Wait => {}
            Decision::Join(c) => {
                tracing::info!(cluster = %hex(c), "a seen node belongs to a cluster: joining it");
                if let Err(e) = raft.adopt_cluster(c) {
                    tracing::error!(error = %e, "cannot join the cluster");
                }
                return;
            }
            Decision::Initialize(voters) => {
                let mine = loop {
                    let c: u64 = rand::random();
                    if c != 0 {
                        break c;
                    }
                };
                let stored = match discovery.create_record("cluster-id", &hex(mine)).await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let Ok(c) = parse_hex("cluster-id", &stored) else {
                    return;
                };
                if let Err(e) = raft.adopt_cluster(c) {
                    tracing::error!(error = %e, "cannot join the cluster");
                    return;
                }
                if c != mine {
                    return; // another node initialized first
                }
                tracing::info!(cluster = %hex(c), voters = ?voters.keys().collect::<Vec<_>>(),
                    name = %s.cluster_name, "bootstrapping the cluster from this node");
                if let Err(e) = raft.initialize(voters).await {
                    tracing::error!(error = %e, "initializing the cluster failed");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(expect: usize) -> Settings {
        Settings {
            cluster_name: "c".into(),
            advertise: "a:1".into(),
            api_addr: None,
            bootstrap_expect: expect,
            voters: 3,
            remove_dead_after: None,
            remove_learners_after: Duration::from_secs(600),
            renew_every: Duration::from_millis(200),
            lease: Duration::from_secs(1),
            catch_up_lag: 100,
        }
    }

    fn seen(ids: &[u64]) -> BTreeMap<u64, NodeInfo> {
        ids.iter()
            .map(|i| (*i, NodeInfo::new("c", *i, format!("a:{i}"))))
            .collect()
    }

    #[test]
    fn only_the_lowest_of_a_stable_full_set_initializes() {
        let s = settings(3);
        let long = Duration::from_secs(1);
        assert_eq!(decide(1, &seen(&[1, 2]), long, &s), Decision::Wait);
        assert_eq!(
            decide(1, &seen(&[1, 2, 3]), Duration::ZERO, &s),
            Decision::Wait
        );
        assert_eq!(decide(2, &seen(&[1, 2, 3]), long, &s), Decision::Wait);
        match decide(1, &seen(&[1, 2, 3, 4, 5]), long, &s) {
            Decision::Initialize(v) => assert_eq!(v.keys().copied().collect::<Vec<_>>(), [1, 2, 3]),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_seen_member_of_a_cluster_means_join_never_initialize() {
        let s = settings(1);
        let mut nodes = seen(&[1, 2]);
        if let Some(n) = nodes.get_mut(&2) {
            n.metadata
                .insert(super::super::META_CLUSTER.into(), hex(77));
        }
        assert_eq!(
            decide(1, &nodes, Duration::from_secs(5), &s),
            Decision::Join(77)
        );
    }
}
