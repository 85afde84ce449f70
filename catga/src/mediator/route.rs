//! Choosing the node for a routed query: rendezvous hashing for
//! `key(field)`, a shared counter for `round_robin`, and the power of two
//! choices over a decaying peak latency average and in-flight calls for
//! `least_loaded`. Pure logic (the caller passes clocks and randomness), so
//! the properties are unit-tested here.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How fast a latency average forgets: a sample `TAU` old weighs 1/e.
const TAU: Duration = Duration::from_secs(2);

/// Rendezvous (highest random weight) score of `node` for `key`: xxh3 of
/// both, seeded with nothing, so every caller in every process agrees.
pub(crate) fn hrw_score(key: u64, node: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&key.to_le_bytes());
    b[8..].copy_from_slice(&node.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// `nodes` ordered by rendezvous score for `key`, best first (the first is
/// the owner; the next ones are where the key goes if it is down). Ties
/// (astronomically rare) break by id.
pub(crate) fn hrw_order(key: u64, nodes: &[u64]) -> Vec<u64> {
    let mut scored: Vec<(u64, u64)> = nodes.iter().map(|&n| (hrw_score(key, n), n)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, n)| n).collect()
}

/// `nodes` (sorted) rotated to start at the `turn`-th: each call takes the
/// next turn, so over one cycle of `nodes.len()` turns every node leads once.
pub(crate) fn round_robin_order(turn: u64, nodes: &[u64]) -> Vec<u64> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let start = (turn % nodes.len() as u64) as usize;
    nodes[start..]
        .iter()
        .chain(&nodes[..start])
        .copied()
        .collect()
}

/// What the caller knows of one node's speed and load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Peak-sensitive latency average, in nanoseconds.
    cost_ns: f64,
    /// When `cost_ns` was last updated.
    at: Option<Instant>,
    /// Calls from this node to it that have not answered yet.
    pub(crate) outstanding: u64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            cost_ns: 0.0,
            at: None,
            outstanding: 0,
        }
    }
}

impl Load {
    /// Records one call's latency: a slower sample replaces the average at
    /// once (a node that slows down is avoided at once), a faster one
    /// pulls it down as time passes (`TAU`).
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let cost = self.decayed(now);
        self.cost_ns = if rtt > cost || self.at.is_none() {
            rtt
        } else {
            let elapsed = self
                .at
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            let w = (-elapsed / TAU.as_secs_f64()).exp();
            cost * w + rtt * (1.0 - w)
        };
        self.at = Some(now);
    }

    /// The average, decayed towards zero while no call answers, so that a
    /// node avoided because it was slow is tried again now and then.
    fn decayed(&self, now: Instant) -> f64 {
        match self.at {
            None => 0.0,
            Some(t) => {
                let idle = now.saturating_duration_since(t).as_secs_f64();
                self.cost_ns * (-idle / (4.0 * TAU.as_secs_f64())).exp()
            }
        }
    }

    /// The cost of sending one more call: latency times (in flight + 1).
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        (self.decayed(now) + 1.0) * (self.outstanding as f64 + 1.0)
    }
}

/// The power of two choices: two distinct nodes picked with `pick` (a
/// uniform index below its argument), the cheaper first; then the others,
/// cheapest first, as fallbacks.
pub(crate) fn least_loaded_order(
    nodes: &[u64],
    loads: &HashMap<u64, Load>,
    now: Instant,
    mut pick: impl FnMut(usize) -> usize,
) -> Vec<u64> {
    let cost = |n: u64| loads.get(&n).copied().unwrap_or_default().cost(now);
    let mut order: Vec<u64> = Vec::with_capacity(nodes.len());
    match nodes.len() {
        0 => return order,
        1 => return nodes.to_vec(),
        len => {
            let a = pick(len);
            let mut b = pick(len - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nodes[a], nodes[b]);
            if cost(b) < cost(a) {
                order.extend([b, a]);
            } else {
                order.extend([a, b]);
            }
        }
    }
    let mut rest: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|n| !order.contains(n))
        .collect();
    rest.sort_by(|x, y| cost(*x).total_cmp(&cost(*y)));
    order.extend(rest);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(nodes: &[u64], keys: u64) -> Vec<u64> {
        (0..keys)
            .map(|k| hrw_order(xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes()), nodes)[0])
            .collect()
    }

    fn moved(a: &[u64], b: &[u64]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn hrw_moves_one_nth_of_the_keys_when_a_node_joins_or_leaves() {
        const KEYS: u64 = 100_000;
        for n in [3u64, 5, 8] {
            let before: Vec<u64> = (1..=n).collect();
            let joined: Vec<u64> = (1..=n + 1).collect();
            let left: Vec<u64> = (1..n).collect();
            let base = owners(&before, KEYS);
            let join = moved(&base, &owners(&joined, KEYS));
            let leave = moved(&base, &owners(&left, KEYS));
            let expect_join = 1.0 / (n + 1) as f64;
            let expect_leave = 1.0 / n as f64;
            println!(
                "hrw n={n}: join moved {:.2}% (ideal {:.2}%), leave moved {:.2}% (ideal {:.2}%)",
                join * 100.0,
                expect_join * 100.0,
                leave * 100.0,
                expect_leave * 100.0
            );
            assert!((join - expect_join).abs() <= 0.01, "n={n} join {join}");
            assert!((leave - expect_leave).abs() <= 0.01, "n={n} leave {leave}");
        }
    }

    #[test]
    fn hrw_only_moves_keys_to_the_joiner_or_from_the_leaver() {
        let before = [1u64, 2, 3, 4];
        let after = [1u64, 2, 3, 4, 5];
        for k in 0..20_000u64 {
            let (a, b) = (hrw_order(k, &before)[0], hrw_order(k, &after)[0]);
            assert!(a == b || b == 5, "key {k} moved from {a} to {b}");
        }
    }

    #[test]
    fn hrw_is_the_same_from_every_caller_whatever_the_order_of_members() {
        // a fixed value: the hash is not seeded per process or build
        assert_eq!(hrw_score(42, 7), hrw_score(42, 7));
        let golden = hrw_order(12345, &[1, 2, 3, 4, 5]);
        for perm in [[5u64, 4, 3, 2, 1], [3, 1, 5, 2, 4], [2, 5, 1, 4, 3]] {
            assert_eq!(hrw_order(12345, &perm), golden);
        }
        assert_eq!(
            hrw_score(1, 1),
            xxhash_rust::xxh3::xxh3_64(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn hrw_spreads_keys_evenly() {
        let nodes = [1u64, 2, 3];
        let o = owners(&nodes, 30_000);
        for n in nodes {
            let share = o.iter().filter(|x| **x == n).count() as f64 / 30_000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "node {n}: {share}");
        }
    }

    #[test]
    fn round_robin_is_fair_within_one_call_per_node_per_cycle() {
        let nodes = [1u64, 2, 3, 4, 5];
        let mut count: HashMap<u64, u64> = HashMap::new();
        for turn in 0..10_003u64 {
            let order = round_robin_order(turn, &nodes);
            assert_eq!(order.len(), nodes.len());
            *count.entry(order[0]).or_default() += 1;
            // after every full cycle each node led exactly as often
            if (turn + 1) % nodes.len() as u64 == 0 {
                let max = count.values().max().copied().unwrap_or(0);
                let min = nodes
                    .iter()
                    .map(|n| count.get(n).copied().unwrap_or(0))
                    .min();
                assert_eq!(Some(max), min, "after turn {turn}: {count:?}");
            }
        }
        let max = count.values().max().copied().unwrap_or(0);
        let min = count.values().min().copied().unwrap_or(0);
        assert!(max - min <= 1, "{count:?}");
    }

    #[test]
    fn least_loaded_avoids_a_node_ten_times_slower() {
        let nodes = [1u64, 2, 3];
        let mut loads: HashMap<u64, Load> = HashMap::new();
        let mut now = Instant::now();
        let mut rng = 0x1234_5678_u64;
        let mut pick = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let mut sent: HashMap<u64, u64> = HashMap::new();
        const CALLS: u64 = 10_000;
        for _ in 0..CALLS {
            let order = least_loaded_order(&nodes, &loads, now, &mut pick);
            let to = order[0];
            *sent.entry(to).or_default() += 1;
            let rtt = if to == 3 {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(1)
            };
            // one call at a time, one millisecond apart
            now += Duration::from_millis(1);
            loads.entry(to).or_default().observe(rtt, now);
        }
        let slow = sent.get(&3).copied().unwrap_or(0) as f64 / CALLS as f64;
        println!(
            "least_loaded: slow node got {:.2}% ({sent:?})",
            slow * 100.0
        );
        assert!(slow <= 0.10, "{sent:?}");
        assert!(sent.contains_key(&1) && sent.contains_key(&2), "{sent:?}");
    }

    #[test]
    fn least_loaded_prefers_the_node_with_fewer_calls_in_flight() {
        let now = Instant::now();
        let mut loads: HashMap<u64, Load> = HashMap::new();
        for n in [1u64, 2] {
            loads
                .entry(n)
                .or_default()
                .observe(Duration::from_millis(1), now);
        }
        loads.entry(1).or_default().outstanding = 5;
        let order = least_loaded_order(&[1, 2], &loads, now, |_| 0);
        assert_eq!(order, vec![2, 1]);
    }

    #[test]
    fn a_slow_sample_counts_at_once_and_fades_while_idle() {
        let t0 = Instant::now();
        let mut l = Load::default();
        l.observe(Duration::from_millis(1), t0);
        l.observe(Duration::from_millis(50), t0 + Duration::from_millis(1));
        assert!(l.cost(t0 + Duration::from_millis(1)) > 40e6);
        // unused for a minute: worth trying again
        assert!(l.cost(t0 + Duration::from_secs(60)) < 1e6);
    }
}
