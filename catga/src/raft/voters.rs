//! The odd voter rule, as a pure function: which voters a membership change
//! leaves. Four voters tolerate no more failures than three and need one
//! more acknowledgement per write, so every change the leader makes (a
//! removal, a leave, a node added) ends at an odd count: it promotes
//! caught-up learners up to the target, or makes voters learners when no
//! learner can make the count odd. `leader.rs` applies the plan.

use std::collections::{BTreeMap, BTreeSet};

/// How far behind a learner may be and still be promoted.
pub(crate) const READY_MAX_LAG: u64 = 100;

/// What the leader knows of one other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Entries behind the leader's last log index (`u64::MAX`: nothing
    /// replicated yet).
    pub(crate) lag: u64,
    /// It answered the leader within an election timeout.
    pub(crate) reachable: bool,
}

/// The voters after a change, and who moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) voters: BTreeSet<u64>,
    pub(crate) promoted: Vec<u64>,
    pub(crate) demoted: Vec<u64>,
}

/// The voter set the leader `me` moves to when `removing` leaves the
/// membership (if any), with `joining` (a learner that just caught up, if
/// any) promoted first when there is room. `target`: the most voters the
/// cluster keeps (odd; `usize::MAX` for no limit).
///
/// The count is the largest odd number no greater than the target and the
/// voters left plus the learners ready (reachable, at most
/// [`READY_MAX_LAG`] behind). Learners are promoted in the order: the
/// joining one, then the least behind, then the lowest id. Voters are
/// demoted in the order: unreachable first, then the furthest behind,
/// then the highest id (the most recently added, as ids are usually handed
/// out); never `me`. A demoted voter keeps receiving the log, so it is
/// promoted again with the next node that comes.
pub(crate) fn plan(
    me: u64,
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    peers: &BTreeMap<u64, Peer>,
    removing: Option<u64>,
    joining: Option<u64>,
    target: usize,
) -> Plan {
    let peer = |id: &u64| {
        peers.get(id).copied().unwrap_or(Peer {
            lag: u64::MAX,
            reachable: false,
        })
    };
    let mut next: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|id| Some(*id) != removing)
        .collect();
    let mut ready: Vec<u64> = learners
        .iter()
        .copied()
        .filter(|id| Some(*id) != removing && !voters.contains(id))
        .filter(|id| {
            let p = peer(id);
            Some(*id) == joining || (p.reachable && p.lag <= READY_MAX_LAG)
        })
        .collect();
    ready.sort_by_key(|id| (Some(*id) != joining, peer(id).lag, *id));
    let mut want = target.min(next.len() + ready.len());
    if want.is_multiple_of(2) {
        want = want.saturating_sub(1);
    }
    let mut promoted = Vec::new();
    let mut demoted = Vec::new();
    if want > next.len() {
        promoted = ready[..want - next.len()].to_vec();
        next.extend(&promoted);
    } else if want < next.len() {
        let mut order: Vec<u64> = next.iter().copied().filter(|id| *id != me).collect();
        order.sort_by_key(|id| {
            let p = peer(id);
            std::cmp::Reverse((!p.reachable, p.lag, *id))
        });
        demoted = order.into_iter().take(next.len() - want).collect();
        for id in &demoted {
            next.remove(id);
        }
    }
    Plan {
        voters: next,
        promoted,
        demoted,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn up(ids: &[(u64, u64)]) -> BTreeMap<u64, Peer> {
        ids.iter()
            .map(|(id, lag)| {
                (
                    *id,
                    Peer {
                        lag: *lag,
                        reachable: true,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_leave_from_five_voters_demotes_one_more() {
        let peers = up(&[(2, 0), (3, 0), (4, 0), (5, 0)]);
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[]),
            &peers,
            Some(3),
            None,
            5,
        );
        assert_eq!(p.voters, set(&[1, 2, 4]));
        assert_eq!(p.demoted, vec![5]);
        assert!(p.promoted.is_empty());
        // without a limit the same: four voters are never kept
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[]),
            &peers,
            Some(3),
            None,
            usize::MAX,
        );
        assert_eq!(p.voters, set(&[1, 2, 4]));
    }

    #[test]
    fn the_demoted_voter_is_unreachable_then_furthest_behind_then_newest_never_the_leader() {
        let mut peers = up(&[(1, 0), (2, 0), (3, 7), (4, 0), (5, 0)]);
        let five = set(&[1, 2, 3, 4, 5]);
        // furthest behind
        assert_eq!(
            plan(5, &five, &set(&[]), &peers, Some(1), None, 5).demoted,
            vec![3]
        );
        // unreachable beats behind
        peers.insert(
            2,
            Peer {
                lag: 0,
                reachable: false,
            },
        );
        assert_eq!(
            plan(5, &five, &set(&[]), &peers, Some(1), None, 5).demoted,
            vec![2]
        );
        // all equal: the highest id that is not the leader
        let peers = up(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
        assert_eq!(
            plan(5, &five, &set(&[]), &peers, Some(1), None, 5).demoted,
            vec![4]
        );
        // the leader leaving itself: another voter is demoted
        let p = plan(5, &five, &set(&[]), &peers, Some(5), None, 5);
        assert_eq!(p.voters, set(&[1, 2, 3]));
        assert_eq!(p.demoted, vec![4]);
    }

    #[test]
    fn a_caught_up_learner_takes_the_removed_voters_place() {
        let peers = up(&[(2, 0), (3, 0), (4, 0), (5, 0), (6, 3)]);
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[6]),
            &peers,
            Some(2),
            None,
            5,
        );
        assert_eq!(p.voters, set(&[1, 3, 4, 5, 6]));
        assert_eq!(p.promoted, vec![6]);
        // one too far behind, or unreachable, does not
        let mut peers = up(&[(2, 0), (3, 0), (4, 0), (5, 0), (6, 500)]);
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[6]),
            &peers,
            Some(2),
            None,
            5,
        );
        assert_eq!(p.voters.len(), 3);
        peers.insert(
            6,
            Peer {
                lag: 0,
                reachable: false,
            },
        );
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[6]),
            &peers,
            Some(2),
            None,
            5,
        );
        assert_eq!(p.voters.len(), 3);
    }

    #[test]
    fn a_joining_node_is_promoted_with_the_demoted_one_or_waits() {
        let peers = up(&[(2, 0), (3, 0), (4, 0), (6, 0)]);
        // three voters, the learner a leave left, and node 6 caught up
        let p = plan(1, &set(&[1, 2, 3]), &set(&[4, 6]), &peers, None, Some(6), 5);
        assert_eq!(p.voters, set(&[1, 2, 3, 4, 6]));
        assert_eq!(p.promoted, vec![6, 4]);
        // alone, it waits as a learner (four voters would be even)
        let p = plan(1, &set(&[1, 2, 3]), &set(&[6]), &peers, None, Some(6), 5);
        assert_eq!(p.voters, set(&[1, 2, 3]));
        assert!(p.promoted.is_empty() && p.demoted.is_empty());
        // at the target it stays a learner
        let p = plan(
            1,
            &set(&[1, 2, 3, 4, 5]),
            &set(&[6]),
            &up(&[(6, 0)]),
            None,
            Some(6),
            5,
        );
        assert_eq!(p.voters, set(&[1, 2, 3, 4, 5]));
        // with one slot, the joining node goes first
        let p = plan(
            1,
            &set(&[1, 2, 3, 4]),
            &set(&[5, 6]),
            &up(&[(5, 0), (6, 2)]),
            None,
            Some(6),
            5,
        );
        assert_eq!(p.promoted, vec![6]);
    }

    #[test]
    fn two_voters_become_one_and_the_last_voter_stays() {
        let peers = up(&[(2, 0), (3, 0)]);
        let p = plan(1, &set(&[1, 2, 3]), &set(&[]), &peers, Some(3), None, 3);
        assert_eq!(p.voters, set(&[1]));
        assert_eq!(p.demoted, vec![2]);
        let p = plan(1, &set(&[1]), &set(&[]), &peers, None, None, 3);
        assert_eq!(p.voters, set(&[1]));
    }

    proptest! {
        /// Whatever the membership, the plan's voter count is odd (or zero
        /// when nobody is left), within the target, keeps the leader unless
        /// it leaves, never holds the removed node, moves only learners up
        /// and voters down, and changes nothing needlessly.
        #[test]
        fn the_plan_is_odd_within_target_and_minimal(
            voters in proptest::collection::btree_set(0u64..12, 0..9),
            learners in proptest::collection::btree_set(0u64..12, 0..6),
            lags in proptest::collection::vec((0u64..300, any::<bool>()), 12),
            me in 0u64..12,
            removing in proptest::option::of(0u64..12),
            joining in proptest::option::of(0u64..12),
            target in prop_oneof![Just(1usize), Just(3), Just(5), Just(7), Just(usize::MAX)],
        ) {
            let mut voters = voters;
            voters.insert(me);
            let learners: BTreeSet<u64> = learners.difference(&voters).copied().collect();
            let joining = joining.filter(|j| learners.contains(j));
            let peers: BTreeMap<u64, Peer> = lags
                .iter()
                .enumerate()
                .map(|(i, (lag, reachable))| (i as u64, Peer { lag: *lag, reachable: *reachable }))
                .collect();
            let p = plan(me, &voters, &learners, &peers, removing, joining, target);
            let n = p.voters.len();
            prop_assert!(n % 2 == 1 || n == 0, "even: {:?}", p);
            let left = voters.len() - usize::from(removing.is_some_and(|r| voters.contains(&r)));
            prop_assert!(n <= target, "over the target: {:?}", p);
            if removing != Some(me) {
                prop_assert!(p.voters.contains(&me), "the leader was dropped: {:?}", p);
            }
            if let Some(r) = removing {
                prop_assert!(!p.voters.contains(&r));
            }
            prop_assert!(p.promoted.iter().all(|id| learners.contains(id)));
            prop_assert!(p.demoted.iter().all(|id| voters.contains(id) && *id != me));
            prop_assert!(p.promoted.is_empty() || p.demoted.is_empty());
            // at most one voter moves down unless the count was above the target
            if left <= target {
                prop_assert!(p.demoted.len() <= 1, "{:?}", p);
            }
            // a joining node is promoted whenever anyone is
            if let (Some(j), false) = (joining, p.promoted.is_empty()) {
                prop_assert!(p.promoted.contains(&j));
            }
        }
    }
}
