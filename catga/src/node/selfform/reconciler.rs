//! The membership reconciler. It runs on every node and acts only while its
//! node leads, so it survives leader changes: everything it decides from is
//! the Raft membership, the discovery watch and the store's records.
//!
//! One change at a time, in this order: remove a node that is gone for
//! good (a learner that left gracefully or whose lease passed
//! `remove_learners_after` ago; a voter only after `remove_dead_after`, if
//! set), promote caught-up learners while there are fewer voters than the
//! target (two at once from an odd count, so the count stays odd: four
//! voters tolerate no more failures than three and need one more ack),
//! make one voter a learner while the count is even and no learner can be
//! promoted (after a leave or a removal; it is promoted again with the next
//! node that comes), add a seen node as a learner. A node whose lease passed is only
//! *suspect* until then. Removed ids are recorded in the store first and
//! never added again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    META_CLUSTER, Settings, hex, node_record, open_watch, published_cluster, removed_record,
};
use crate::discovery::{Discovery, LeaveReason, MemberEvent, NodeInfo};
use crate::node::WeakNode;
use crate::raft::MembershipView;

/// How often the reconciler looks at the membership.
const TICK: Duration = Duration::from_millis(100);
/// How long it waits after a change failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often each member checks that the store still holds its records.
const RECORDS_EVERY: Duration = Duration::from_secs(2);

/// One membership change.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Remove(u64),
    /// One learner (from an even voter count) or two (from an odd one), in
    /// one membership change.
    Promote(Vec<u64>),
    AddLearner(u64, String),
    /// A voter becomes a learner (the voter count was even).
    Demote(u64),
}

/// What the reconciler knows besides the membership.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Nodes registered now.
    pub(super) alive: BTreeMap<u64, NodeInfo>,
    /// Nodes that left: when, and how.
    pub(super) left: BTreeMap<u64, (Instant, LeaveReason)>,
    /// Ids never to add (recorded as removed, or of another cluster).
    pub(super) refused: BTreeSet<u64>,
    /// Ids this node's transport refuses because they came back with
    /// another data dir: the member of that id is gone.
    pub(super) replaced: BTreeSet<u64>,
}

/// The pure rule: the next change, if any.
pub(super) fn next_step(
    me: u64,
    cluster: u64,
    view: &MembershipView,
    seen: &Seen,
    s: &Settings,
    now: Instant,
) -> Option<Step> {
    if !view.leader {
        return None;
    }
    // a learner that came back with another data dir (wiped, or another
    // machine under its id; the store lost its records when it started)
    // can never catch up: the leader refuses it on every connection
    if let Some(id) = seen
        .replaced
        .iter()
        .find(|id| view.learners.contains_key(id))
    {
        return Some(Step::Remove(*id));
    }
    for (id, (at, reason)) in &seen.left {
        let gone_for = now.saturating_duration_since(*at);
        if view.learners.contains_key(id)
            && (*reason == LeaveReason::Graceful || gone_for >= s.remove_learners_after)
        {
            return Some(Step::Remove(*id));
        }
        if view.voters.contains_key(id)
            && *id != me
            && view.voters.len() > 1
            && s.remove_dead_after.is_some_and(|d| gone_for >= d)
        {
            return Some(Step::Remove(*id));
        }
    }
    if view.voters.len() < s.voters {
        let ready: Vec<u64> = view
            .learners
            .keys()
            .filter(|id| {
                seen.alive.contains_key(id)
                    && view.lag.get(id).is_some_and(|lag| *lag <= s.catch_up_lag)
            })
            .copied()
            .collect();
        // keep the voter count odd: from an odd count promote two or none
        // (the target is odd, so there is room for two)
        let n = if view.voters.len() % 2 == 1 { 2 } else { 1 };
        if ready.len() >= n && view.voters.len() + n <= s.voters {
            return Some(Step::Promote(ready[..n].to_vec()));
        }
    }
    // An even count (a voter left or was removed, and no learner could take
    // its place) tolerates no more failures than one voter less and needs
    // one more ack per write: make one voter a learner. It keeps the log, so
    // it is promoted again, together with the next node that comes.
    // The change commits only with a majority of the current voters (joint
    // consensus): with too few of them alive (two voters, one gone) it
    // would block the reconciler until the dead one returns.
    let alive_voters = view
        .voters
        .keys()
        .filter(|id| **id == me || seen.alive.contains_key(id))
        .count();
    if view.voters.len().is_multiple_of(2) && alive_voters > view.voters.len() / 2 {
        // not this node (the leader); a voter that is gone first, then the
        // one furthest behind, then the highest id
        let pick = view.voters.keys().filter(|id| **id != me).max_by_key(|id| {
            (
                !seen.alive.contains_key(id),
                view.lag.get(id).copied().unwrap_or(u64::MAX),
                **id,
            )
        });
        if let Some(id) = pick {
            return Some(Step::Demote(*id));
        }
    }
    seen.alive
        .values()
        .find(|n| {
            n.id != me
                && !view.voters.contains_key(&n.id)
                && !view.learners.contains_key(&n.id)
                && !seen.refused.contains(&n.id)
                && !seen.replaced.contains(&n.id)
                && (published_cluster(n) == 0 || published_cluster(n) == cluster)
        })
        .map(|n| Step::AddLearner(n.id, n.raft_addr.clone()))
}

pub(super) async fn run(
    node: WeakNode,
    discovery: Arc<dyn Discovery>,
    s: Settings,
    mut info: NodeInfo,
    stop: CancellationToken,
) {
    let Some(mut watch) = open_watch(&discovery, &stop).await else {
        return;
    };
    let mut seen = Seen::default();
    let mut warned: BTreeSet<u64> = BTreeSet::new();
    // one look every TICK at most (and on discovery events): the
    // membership moves slowly, and the store is not polled per write
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at = Instant::now();
    let mut records_at = Instant::now();
    let mut records_warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = watch.next() => match ev {
                Some(ev @ (MemberEvent::Joined(_) | MemberEvent::Updated(_))) => {
                    let updated = matches!(ev, MemberEvent::Updated(_));
                    let (MemberEvent::Joined(n) | MemberEvent::Updated(n)) = ev else {
                        continue;
                    };
                    if let Some(me) = node.upgrade() {
                        me.count_discovery(usize::from(updated));
                        me.discovery_saw(n.id, Some(n.clone()));
                    }
                    seen.left.remove(&n.id);
                    seen.alive.insert(n.id, n);
                }
                Some(MemberEvent::Left { id, reason, .. }) => {
                    if let Some(me) = node.upgrade() {
                        me.count_discovery(2);
                        me.discovery_saw(id, None);
                    }
                    seen.alive.remove(&id);
                    seen.left.insert(id, (Instant::now(), reason));
                }
                None => match open_watch(&discovery, &stop).await {
                    Some(w) => watch = w,
                    None => return,
                },
            },
            _ = tick.tick() => {}
        }
        if Instant::now() < retry_at {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        let raft = node.raft();
        let me = raft.id();
        let (cluster, incarnation) = raft.data_identity();
        if Instant::now() >= records_at {
            records_at = Instant::now() + RECORDS_EVERY;
            restore_records(&*discovery, me, cluster, incarnation, &mut records_warned).await;
        }
        // tell the others which cluster this node belongs to, once known
        if info.metadata.get(META_CLUSTER) != Some(&hex(cluster)) {
            let mut next = info.clone();
            next.metadata.insert(META_CLUSTER.into(), hex(cluster));
            if discovery.register(next.clone()).await.is_ok() {
                info = next;
            }
        }
        let view = raft.membership();
        if !view.leader {
            continue;
        }
        for (id, (_, reason)) in &seen.left {
            if *id != me && view.voters.contains_key(id) && warned.insert(*id) {
                tracing::warn!(
                    node = id,
                    ?reason,
                    "voter {id} left discovery: suspect; it stays a voter{}",
                    match s.remove_dead_after {
                        Some(d) => format!(" unless it is back within {d:?}"),
                        None => " (set remove_dead_after to remove dead voters)".into(),
                    }
                );
            }
        }
        warned.retain(|id| seen.left.contains_key(id));
        seen.replaced = raft.replaced_peers();
        let Some(step) = next_step(me, cluster, &view, &seen, &s, Instant::now()) else {
            continue;
        };
        match step {
            Step::Remove(id) => {
                if let Err(e) = discovery
                    .create_record(&removed_record(id), "removed")
                    .await
                {
                    tracing::warn!(node = id, error = %e,
                        "cannot record the removal in the store; not removing yet");
                    continue;
                }
                tracing::info!(node = id, "removing node from the membership");
                match raft.remove_here(id).await {
                    Ok(()) => {
                        seen.left.remove(&id);
                        seen.refused.insert(id);
                    }
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "removal failed; retrying");
                        retry_at = Instant::now() + RETRY_AFTER;
                    }
                }
            }
            Step::Promote(ids) => {
                tracing::info!(nodes = ?ids, "promoting caught-up learners to voters");
                if let Err(e) = raft.promote_here(ids.clone()).await {
                    tracing::warn!(nodes = ?ids, error = %e, "promotion failed; retrying");
                    retry_at = Instant::now() + RETRY_AFTER;
                }
            }
            Step::Demote(id) => {
                tracing::info!(
                    node = id,
                    voters = view.voters.len(),
                    "an even number of voters: node {id} becomes a learner (it is promoted \
                     again with the next node that joins)"
                );
                if let Err(e) = raft.demote_here(id).await {
                    tracing::warn!(node = id, error = %e, "demotion failed; retrying");
                    retry_at = Instant::now() + RETRY_AFTER;
                }
            }
            Step::AddLearner(id, addr) => {
                match discovery.read_record(&removed_record(id)).await {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        tracing::info!(
                            node = id,
                            "node {id} was removed from this cluster: refusing it (ids are never reused)"
                        );
                        seen.refused.insert(id);
                        continue;
                    }
                    Err(_) => continue, // the store is down: add later
                }
                let theirs = seen.alive.get(&id).map(published_cluster).unwrap_or(0);
                if theirs != 0 && theirs != cluster {
                    seen.refused.insert(id);
                    continue;
                }
                // the node's own record must exist (it checked its data dir)
                if !matches!(discovery.read_record(&node_record(id)).await, Ok(Some(_))) {
                    continue;
                }
                tracing::info!(node = id, %addr, "adding node as a learner");
                if let Err(e) = raft.add_learner_here(id, addr).await {
                    tracing::warn!(node = id, error = %e, "adding the learner failed; retrying");
                    retry_at = Instant::now() + RETRY_AFTER;
                }
            }
        }
    }
}

/// Writes this member's records back if the store lost them (a Redis
/// restarted empty, a purged bucket): the cluster id and this node's data
/// dir incarnation are what keep a wiped node with this id, or a node of
/// another cluster, out at start. They live in every member's data dir, so
/// the members, not the store, are their source of truth. A record that
/// holds another value is logged once (something else claimed it while the
/// store was empty); a store that cannot be reached is tried next time.
async fn restore_records(
    discovery: &dyn Discovery,
    me: u64,
    cluster: u64,
    incarnation: u64,
    warned: &mut bool,
) {
    if cluster == 0 {
        return; // not in a cluster yet: the bootstrap writes them
    }
    let records = [
        ("cluster-id".to_string(), hex(cluster)),
        (node_record(me), hex(incarnation)),
    ];
    for (name, ours) in records {
        match discovery.read_record(&name).await {
            Ok(Some(held)) if held == ours => continue,
            Ok(Some(held)) => {
                if !*warned {
                    *warned = true;
                    tracing::error!(
                        record = %name,
                        %held,
                        %ours,
                        "the discovery store's record `{name}` is {held}, and this member's is \
                         {ours}: another node claimed it while the store had lost its records. \
                         Find and stop that node (a wiped or foreign node using a member's id \
                         or this cluster's name)"
                    );
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        match discovery.create_record(&name, &ours).await {
            Ok(held) if held == ours => {
                tracing::warn!(record = %name, "the discovery store had lost record `{name}`: restored it");
            }
            Ok(_) | Err(_) => {} // claimed meanwhile (logged next time), or down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            cluster_name: "c".into(),
            advertise: "a:1".into(),
            api_addr: None,
            bootstrap_expect: 3,
            voters: 3,
            remove_dead_after: None,
            remove_learners_after: Duration::from_secs(600),
            renew_every: Duration::from_millis(200),
            lease: Duration::from_secs(1),
            catch_up_lag: 10,
        }
    }

    fn view(voters: &[u64], learners: &[u64], lag: &[(u64, u64)]) -> MembershipView {
        MembershipView {
            leader: true,
            voters: voters.iter().map(|i| (*i, format!("a:{i}"))).collect(),
            learners: learners.iter().map(|i| (*i, format!("a:{i}"))).collect(),
            lag: lag.iter().copied().collect(),
        }
    }

    fn alive(ids: &[u64]) -> Seen {
        Seen {
            alive: ids
                .iter()
                .map(|i| (*i, NodeInfo::new("c", *i, format!("a:{i}"))))
                .collect(),
            ..Seen::default()
        }
    }

    #[test]
    fn a_new_node_becomes_a_learner_and_is_promoted_only_below_the_target() {
        let s = settings();
        let now = Instant::now();
        let seen = alive(&[1, 2, 3, 4]);
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3], &[], &[]), &seen, &s, now),
            Some(Step::AddLearner(4, "a:4".into()))
        );
        // three voters: the caught-up learner waits
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3], &[4], &[(4, 0)]), &seen, &s, now),
            None
        );
        // a voter left: the learner takes over once caught up (until then
        // the count is even, and one voter steps down)
        let seen = alive(&[1, 2, 4]);
        assert_eq!(
            next_step(1, 7, &view(&[1, 2], &[4], &[(4, 50)]), &seen, &s, now),
            Some(Step::Demote(2))
        );
        assert_eq!(
            next_step(1, 7, &view(&[1, 2], &[4], &[(4, 3)]), &seen, &s, now),
            Some(Step::Promote(vec![4]))
        );
        let mut follower = view(&[1, 2], &[4], &[(4, 3)]);
        follower.leader = false;
        assert_eq!(next_step(1, 7, &follower, &seen, &s, now), None);
    }

    #[test]
    fn voters_stay_odd_two_learners_are_promoted_together() {
        let mut s = settings();
        s.voters = 5;
        let now = Instant::now();
        let seen = alive(&[1, 2, 3, 4, 5]);
        // three voters, one caught-up learner: four voters would tolerate
        // no more failures than three, so it waits for a second one
        assert_eq!(
            next_step(
                1,
                7,
                &view(&[1, 2, 3], &[4, 5], &[(4, 0), (5, 90)]),
                &seen,
                &s,
                now
            ),
            None
        );
        assert_eq!(
            next_step(
                1,
                7,
                &view(&[1, 2, 3], &[4, 5], &[(4, 0), (5, 2)]),
                &seen,
                &s,
                now
            ),
            Some(Step::Promote(vec![4, 5]))
        );
        let seen = alive(&[1, 2, 3, 4, 5, 6]);
        // four voters (one was removed): one learner makes five
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3, 4], &[6], &[(6, 0)]), &seen, &s, now),
            Some(Step::Promote(vec![6]))
        );
        // at the target: nobody is promoted
        assert_eq!(
            next_step(
                1,
                7,
                &view(&[1, 2, 3, 4, 5], &[6], &[(6, 0)]),
                &seen,
                &s,
                now
            ),
            None
        );
    }

    #[test]
    fn an_even_voter_count_is_made_odd_and_restored_when_a_node_comes() {
        let mut s = settings();
        s.voters = 5;
        let now = Instant::now();
        // five voters, one left: four, no learner to take its place
        let seen = alive(&[1, 2, 3, 4]);
        let four = view(&[1, 2, 3, 4], &[], &[(2, 0), (3, 0), (4, 0)]);
        assert_eq!(
            next_step(1, 7, &four, &seen, &s, now),
            Some(Step::Demote(4))
        );
        // never the leader itself, and a voter that is gone goes first
        let mut seen_gone = alive(&[1, 3, 4]);
        seen_gone.left.insert(2, (now, LeaveReason::Expired));
        assert_eq!(
            next_step(1, 7, &four, &seen_gone, &s, now),
            Some(Step::Demote(2))
        );
        let led_by_4 = view(&[1, 2, 3, 4], &[], &[(1, 0), (2, 0), (3, 0)]);
        assert_eq!(
            next_step(4, 7, &led_by_4, &seen, &s, now),
            Some(Step::Demote(3))
        );
        // then the one furthest behind
        let lagging = view(&[1, 2, 3, 4], &[], &[(2, 40), (3, 0), (4, 0)]);
        assert_eq!(
            next_step(1, 7, &lagging, &seen, &s, now),
            Some(Step::Demote(2))
        );
        // three voters and the demoted learner: stable (one promotion alone
        // would make the count even again)
        let three = view(&[1, 2, 3], &[4], &[(4, 0)]);
        assert_eq!(next_step(1, 7, &three, &seen, &s, now), None);
        // a node comes: it becomes a learner, then both are promoted
        let seen = alive(&[1, 2, 3, 4, 5]);
        assert_eq!(
            next_step(1, 7, &three, &seen, &s, now),
            Some(Step::AddLearner(5, "a:5".into()))
        );
        assert_eq!(
            next_step(
                1,
                7,
                &view(&[1, 2, 3], &[4, 5], &[(4, 0), (5, 1)]),
                &seen,
                &s,
                now
            ),
            Some(Step::Promote(vec![4, 5]))
        );
        // four voters and a caught-up learner: promoting it beats demoting
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3, 4], &[5], &[(5, 0)]), &seen, &s, now),
            Some(Step::Promote(vec![5]))
        );
        // two voters (a three-voter cluster lost one): one voter is left
        let s3 = settings();
        let seen = alive(&[1, 2]);
        assert_eq!(
            next_step(1, 7, &view(&[1, 2], &[], &[(2, 0)]), &seen, &s3, now),
            Some(Step::Demote(2))
        );
        // two voters, the other gone: no demotion (it could not commit)
        let mut seen_alone = alive(&[1]);
        seen_alone.left.insert(2, (now, LeaveReason::Expired));
        assert_eq!(
            next_step(1, 7, &view(&[1, 2], &[], &[(2, 0)]), &seen_alone, &s3, now),
            None
        );
        // and a follower decides nothing
        let mut follower = four.clone();
        follower.leader = false;
        assert_eq!(next_step(1, 7, &follower, &seen, &s, now), None);
    }

    #[test]
    fn dead_voters_stay_unless_asked_and_learners_go_after_their_timeout() {
        let mut s = settings();
        let start = Instant::now();
        let mut seen = alive(&[1, 2]);
        seen.left.insert(3, (start, LeaveReason::Expired));
        seen.left.insert(4, (start, LeaveReason::Expired));
        let v = view(&[1, 2, 3], &[4], &[]);
        let later = start + Duration::from_secs(3600);
        assert_eq!(next_step(1, 7, &v, &seen, &s, start), None);
        assert_eq!(next_step(1, 7, &v, &seen, &s, later), Some(Step::Remove(4)));
        seen.left.remove(&4);
        let v = view(&[1, 2, 3], &[], &[]);
        assert_eq!(next_step(1, 7, &v, &seen, &s, later), None);
        s.remove_dead_after = Some(Duration::from_secs(30));
        assert_eq!(next_step(1, 7, &v, &seen, &s, later), Some(Step::Remove(3)));
        // a learner that left gracefully goes at once
        seen.left.insert(5, (start, LeaveReason::Graceful));
        let v = view(&[1, 2], &[5], &[]);
        assert_eq!(next_step(1, 7, &v, &seen, &s, start), Some(Step::Remove(5)));
    }

    #[test]
    fn a_learner_that_came_back_with_another_data_dir_is_removed() {
        let s = settings();
        let now = Instant::now();
        let mut seen = alive(&[1, 2, 3, 4]);
        seen.replaced.insert(4);
        seen.replaced.insert(3);
        // a learner goes; a voter stays (the operator decides, or
        // remove_dead_after); and one is never added
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3], &[4], &[(4, 9)]), &seen, &s, now),
            Some(Step::Remove(4))
        );
        assert_eq!(
            next_step(1, 7, &view(&[1, 2, 3], &[], &[]), &seen, &s, now),
            None
        );
    }

    #[test]
    fn refused_and_foreign_nodes_are_never_added() {
        let s = settings();
        let now = Instant::now();
        let mut seen = alive(&[1, 4, 5]);
        seen.refused.insert(4);
        if let Some(n) = seen.alive.get_mut(&5) {
            n.metadata.insert(META_CLUSTER.into(), hex(99));
        }
        assert_eq!(next_step(1, 7, &view(&[1], &[], &[]), &seen, &s, now), None);
    }
}
