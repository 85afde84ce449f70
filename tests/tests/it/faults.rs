//! Fault injection: real clusters on 127.0.0.1 under a seeded nemesis, with
//! concurrent clients on every node, and checks on the recorded history.
//!
//! Each run starts a cluster (3 nodes, and 5 in the second test) with two
//! clients per node. A client issues a bounded number of random operations
//! on a few keys of the `kv` domain: writes (set, compare-and-set,
//! increment; each with a unique id that the state machine appends to the
//! key's ledger) and reads (local, and linearizable through
//! `Node::query(.., Consistency::Linearizable)`), and records every one
//! with monotonic invoke and completion times and its outcome: the result,
//! or *unknown* when the call failed (a timeout or a crash: the write may
//! or may not have been applied, at most once).
//!
//! Meanwhile a nemesis, driven by a seed it prints, keeps injecting one
//! fault at a time, each held for a bounded random time: it kills a node
//! (the leader more often than not) and restarts it from its data dir; it
//! cuts a node or a minority (the leader more often) off from the rest and
//! heals the partition; it slows every link to and from a node. The run
//! ends when every client has spent its budget; then every fault is healed,
//! every dead node restarted, and the checks run:
//!
//! - every replica ends with the same state (`assert_replicas_equal`);
//! - no acknowledged write is lost and none is applied twice: every
//!   acknowledged write's id is in its key's ledger exactly once, unknown
//!   ones at most once, and no other id is there; replaying each key's
//!   ledger gives the acknowledged outputs and the replicas' final value
//!   (for the increment-only counter key: its value is the sum of the
//!   acknowledged increments plus a subset of the unknown ones);
//! - the linearizable operations (acknowledged writes, unknown writes that
//!   the ledger shows applied, linearizable reads, and a final read of every
//!   key on every node) are linearizable, per key (a Wing–Gong–Lowe search,
//!   `catga_tests::linearizability`);
//! - every local read returns a value its key had at some point of the log,
//!   never older than the previous local read of the same client on the
//!   same run of its node.
//!
//! A failure prints the seed, the failing key's operations (a shrunk
//! sub-history that is still not linearizable) and writes the whole
//! history to a file in the temp dir.
//!
//! A seed fixes every random choice (each client's operations, the
//! faults, their victims and durations, the snapshot interval and request
//! timeout), not the interleaving of threads and timers: replaying a seed
//! replays the same schedule, which usually, not always, reproduces a
//! failure.
//!
//! Knobs (environment variables):
//! - `CATGA_SEED=<n>`: replay a seed (decimal or 0x-hex); default random;
//! - `CATGA_FAULT_OPS=<n>`: operations per client (default 300; two
//!   clients per node);
//! - `CATGA_FAULT_SECS=<n>`: run the clients for this long instead (then
//!   the op budget is unlimited unless `CATGA_FAULT_OPS` is also set).
//!
//! The long run (ten minutes for each cluster size, both at once; Raft's
//! own warnings about unreachable peers are expected under faults, hence
//! `RUST_LOG=error`):
//!
//! ```sh
//! CATGA_FAULT_SECS=600 RUST_LOG=error cargo test --release -p catga-tests --test faults -- --nocapture
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga::{Consistency, Node, Role};
use catga_tests::harness::{Cluster, T};
use catga_tests::kv::{Cas, Get, Incr, Kv, Set};
use catga_tests::linearizability::{self, Outcome, RegOp, RegOperation, RegOut, Register};
use tokio::sync::watch;
use tokio::time::Instant;

/// Keys taking every kind of write.
const REGISTERS: [&str; 3] = ["a", "b", "c"];
/// A key taking only increments: its final value must be the sum of the
/// increments applied.
const COUNTER: &str = "n";
const CLIENTS_PER_NODE: usize = 2;
const DEFAULT_OPS: u64 = 300;

// ---------------------------------------------------------------- randomness

/// SplitMix64: small, seedable, good enough for choosing faults.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
    /// A generator for a sub-task, derived from this one's seed.
    fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next() ^ salt.wrapping_mul(0xd6e8_feb8_6659_fd93))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    match parsed {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={v:?} is not a number: {e}"),
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut r = Rng(nanos ^ (u64::from(std::process::id()) << 32));
    r.next()
}

// ----------------------------------------------------------------- settings

struct Settings {
    nodes: usize,
    /// The seed as given (`CATGA_SEED` replays it).
    given: u64,
    /// The seed this cluster size runs with.
    seed: u64,
    /// Operations per client, if bounded.
    ops: Option<u64>,
    /// How long the clients run, if bounded.
    secs: Option<Duration>,
}

impl Settings {
    fn from_env(nodes: usize, salt: u64) -> Settings {
        let given = env_u64("CATGA_SEED").unwrap_or_else(random_seed);
        let secs = env_u64("CATGA_FAULT_SECS").map(Duration::from_secs);
        let ops = match (env_u64("CATGA_FAULT_OPS"), secs) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_OPS),
        };
        Settings {
            nodes,
            given,
            // each cluster size runs the same given seed differently
            seed: given ^ salt,
            ops,
            secs,
        }
    }
}

/// Prints the seed again if the test panics, so that it is next to the
/// failure.
struct SeedOnPanic(String);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n*** fault test failed: {} ***\n", self.0);
        }
    }
}

// ------------------------------------------------------------------ history

/// What a client did.
#[derive(Clone, Debug)]
enum Kind {
    /// A write, with its ledger id.
    Write(RegOp, u64),
    /// A read through the read index.
    LinRead,
    /// A read of the local state.
    LocalRead,
}

/// One recorded operation.
#[derive(Clone, Debug)]
struct Record {
    client: u64,
    node: u64,
    /// Which run of the node (0 = the first, +1 per restart).
    run: u64,
    key: &'static str,
    kind: Kind,
    invoke: u64,
    complete: u64,
    /// `None` when the outcome is unknown.
    out: Option<RegOut>,
    error: Option<String>,
}

impl Record {
    fn show(&self) -> String {
        let ms = |t: u64| t as f64 / 1e6;
        let what = match &self.kind {
            Kind::Write(op, id) => format!("{op:?} (id {id:#x})"),
            Kind::LinRead => "get (linearizable)".into(),
            Kind::LocalRead => "get (local)".into(),
        };
        let out = match (&self.out, &self.error) {
            (Some(o), _) => format!("{o:?}"),
            (None, Some(e)) => format!("unknown: {e}"),
            (None, None) => "unknown".into(),
        };
        format!(
            "[{:>11.3} .. {:>11.3} ms] client {:>3} on node {} (run {}) key {}: {what} -> {out}",
            ms(self.invoke),
            ms(self.complete),
            self.client,
            self.node,
            self.run,
            self.key,
        )
    }
}

/// A running node as the clients see it: the handle and which run it is.
type Slot = Option<(Node, u64)>;

/// Shared, append-only: the history of every client, the nemesis's log.
type Shared<T> = Arc<Mutex<Vec<T>>>;

fn push<T>(to: &Shared<T>, item: T) {
    to.lock()
        .expect("no panic while holding the lock")
        .push(item);
}

fn take<T: Clone>(from: &Shared<T>) -> Vec<T> {
    from.lock()
        .expect("no panic while holding the lock")
        .clone()
}

/// Monotonic nanoseconds since the start of the run.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

// ------------------------------------------------------------------ clients

struct ClientCtx {
    id: u64,
    node: u64,
    rng: Rng,
    slot: watch::Receiver<Slot>,
    clock: Clock,
    ops: Option<u64>,
    deadline: Option<Instant>,
    /// The last value this client saw per key (to aim its cas).
    seen: HashMap<&'static str, i64>,
    next_id: u64,
    history: Shared<Record>,
}

async fn client(mut c: ClientCtx) {
    let mut done = 0u64;
    loop {
        if c.ops.is_some_and(|n| done >= n) || c.deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        done += 1;
        // wait (on the slot, not a timer) while the node is down
        let (node, run) = match c.slot.wait_for(|s| s.is_some()).await {
            Ok(s) => s.clone().expect("waited for Some"),
            Err(_) => return,
        };
        let counter = c.rng.chance(25);
        let key = if counter {
            COUNTER
        } else {
            REGISTERS[c.rng.below(REGISTERS.len() as u64) as usize]
        };
        let roll = c.rng.below(100);
        let kind = if roll < 50 {
            c.next_id += 1;
            let id = (c.id << 32) | c.next_id;
            let op = if counter {
                RegOp::Incr(c.rng.range(1, 9) as i64)
            } else {
                match c.rng.below(3) {
                    0 => RegOp::Set(c.rng.range(0, 9) as i64),
                    1 => RegOp::Cas {
                        expected: match c.seen.get(key) {
                            Some(v) if c.rng.chance(80) => *v,
                            _ => c.rng.range(0, 9) as i64,
                        },
                        new: c.rng.range(0, 9) as i64,
                    },
                    _ => RegOp::Incr(c.rng.range(1, 3) as i64),
                }
            };
            Kind::Write(op, id)
        } else if roll < 80 {
            Kind::LinRead
        } else {
            Kind::LocalRead
        };
        let k = key.to_string();
        let invoke = c.clock.now();
        let result: catga::Result<RegOut> = match &kind {
            Kind::Write(RegOp::Set(v), id) => node
                .send(Set {
                    key: k,
                    value: *v,
                    id: *id,
                })
                .await
                .map(|()| RegOut::Set),
            Kind::Write(RegOp::Cas { expected, new }, id) => node
                .send(Cas {
                    key: k,
                    expected: *expected,
                    new: *new,
                    id: *id,
                })
                .await
                .map(RegOut::Cas),
            Kind::Write(RegOp::Incr(by), id) => node
                .send(Incr {
                    key: k,
                    by: *by,
                    id: *id,
                })
                .await
                .map(RegOut::Incr),
            Kind::Write(RegOp::Get, _) => unreachable!("reads are not writes"),
            Kind::LinRead => node
                .query(Get { key: k }, Consistency::Linearizable)
                .await
                .map(RegOut::Get),
            Kind::LocalRead => node.send(Get { key: k }).await.map(RegOut::Get),
        };
        let complete = c.clock.now();
        let (out, error) = match result {
            Ok(o) => {
                match o {
                    RegOut::Get(Some(v)) | RegOut::Incr(v) => {
                        c.seen.insert(key, v);
                    }
                    _ => {}
                }
                (Some(o), None)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        push(
            &c.history,
            Record {
                client: c.id,
                node: c.node,
                run,
                key,
                kind,
                invoke,
                complete,
                out,
                error,
            },
        );
    }
}

// ------------------------------------------------------------------ nemesis

#[derive(Default, Debug)]
struct FaultCounts {
    kills: u64,
    leader_kills: u64,
    partitions: u64,
    leader_partitions: u64,
    slow: u64,
}

struct Nemesis {
    cluster: Cluster,
    slots: Vec<watch::Sender<Slot>>,
    runs: Vec<u64>,
    rng: Rng,
    clock: Clock,
    clients_done: watch::Receiver<bool>,
    counts: FaultCounts,
    log: Shared<String>,
    /// Printed before each line of the log.
    name: String,
}

impl Nemesis {
    fn n(&self) -> u64 {
        self.cluster.nodes.len() as u64
    }

    /// The node that currently calls itself leader, if any (no waiting).
    fn current_leader(&self) -> Option<u64> {
        self.cluster
            .up()
            .find(|n| n.health().role == Role::Leader)
            .map(|n| n.id())
    }

    /// Holds a fault for `d`, or less once the clients are done.
    async fn hold(&mut self, d: Duration) {
        let mut done = self.clients_done.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = done.wait_for(|d| *d) => {}
        }
    }

    fn note(&mut self, what: String) {
        let line = format!(
            "[{:>11.3} ms] nemesis ({}): {what}",
            self.clock.now() as f64 / 1e6,
            self.name
        );
        println!("{line}");
        push(&self.log, line);
    }

    /// Up to `max` distinct victims; the first is the leader with probability
    /// `leader_percent` (when there is one).
    fn victims(&mut self, max: u64, leader_percent: u64) -> (Vec<u64>, bool) {
        let count = self.rng.range(1, max);
        let mut v = Vec::new();
        let mut hit_leader = false;
        if self.rng.chance(leader_percent)
            && let Some(l) = self.current_leader()
        {
            v.push(l);
            hit_leader = true;
        }
        while (v.len() as u64) < count {
            let id = self.rng.range(1, self.n());
            if !v.contains(&id) {
                v.push(id);
            }
        }
        (v, hit_leader)
    }

    async fn run(mut self) -> Nemesis {
        let minority = (self.n() - 1) / 2;
        while !*self.clients_done.borrow() {
            let gap = self.rng.millis(20, 300);
            self.hold(gap).await;
            if *self.clients_done.borrow() {
                break;
            }
            match self.rng.below(100) {
                0..35 => self.kill_and_restart(minority).await,
                35..70 => self.partition(minority).await,
                _ => self.slow_links().await,
            }
        }
        self.note("clients done; every fault healed, every node up".into());
        self
    }

    async fn kill_and_restart(&mut self, minority: u64) {
        let (victims, leader) = self.victims(minority, 60);
        self.counts.kills += victims.len() as u64;
        self.counts.leader_kills += u64::from(leader);
        let hold = self.rng.millis(100, 1500);
        self.note(format!(
            "kill {victims:?}{} for {hold:?}",
            if leader { " (the leader first)" } else { "" }
        ));
        for id in &victims {
            // clients stop picking the node before it goes
            self.slots[*id as usize - 1].send_replace(None);
            self.cluster.kill(*id).await;
        }
        self.hold(hold).await;
        for id in victims {
            if let Err(e) = self.cluster.restart(id).await {
                panic!("restarting node {id}: {e}");
            }
            self.runs[id as usize - 1] += 1;
            let run = self.runs[id as usize - 1];
            self.slots[id as usize - 1].send_replace(Some((self.cluster.node(id).clone(), run)));
            self.note(format!("restarted {id} (run {run})"));
        }
    }

    async fn partition(&mut self, minority: u64) {
        let (cut, leader) = self.victims(minority, 50);
        self.counts.partitions += 1;
        self.counts.leader_partitions += u64::from(leader);
        let hold = self.rng.millis(200, 2000);
        self.note(format!(
            "cut {cut:?}{} off from the rest for {hold:?}",
            if leader { " (the leader first)" } else { "" }
        ));
        for n in self.cluster.up() {
            for other in 1..=self.n() {
                if cut.contains(&n.id()) != cut.contains(&other) {
                    catga::testing::faults(n).block(other);
                }
            }
        }
        self.hold(hold).await;
        for n in self.cluster.up() {
            catga::testing::faults(n).heal();
        }
        self.note("healed".into());
    }

    async fn slow_links(&mut self) {
        let n = self.n();
        let hold = self.rng.millis(300, 2000);
        self.counts.slow += 1;
        if self.rng.chance(30) {
            // every link slow, each by its own delay
            for node in self.cluster.up() {
                for other in (1..=n).filter(|o| *o != node.id()) {
                    catga::testing::faults(node).delay(other, self.rng.millis(1, 100));
                }
            }
            self.note(format!(
                "delay every link by 1..100 ms (each its own) for {hold:?}"
            ));
        } else {
            let (slow, _) = self.victims(1, 30);
            let id = slow[0];
            let delay = self.rng.millis(5, 150);
            self.note(format!(
                "delay every link to and from {id} by {delay:?} for {hold:?}"
            ));
            for node in self.cluster.up() {
                if node.id() == id {
                    for other in (1..=n).filter(|o| *o != id) {
                        catga::testing::faults(node).delay(other, delay);
                    }
                } else {
                    catga::testing::faults(node).delay(id, delay);
                }
            }
        }
        self.hold(hold).await;
        for node in self.cluster.up() {
            catga::testing::faults(node).heal();
        }
        self.note("links back to full speed".into());
    }
}

// ------------------------------------------------------------------- checks

/// Everything the checks need from a run.
struct Run {
    given: u64,
    nodes: usize,
    history: Vec<Record>,
    kv: Kv,
}

impl Run {
    fn writes(&self) -> HashMap<u64, &Record> {
        self.history
            .iter()
            .filter_map(|r| match r.kind {
                Kind::Write(_, id) => Some((id, r)),
                _ => None,
            })
            .collect()
    }

    /// No acknowledged write lost, none applied twice, nothing else applied,
    /// and replaying each key's ledger explains the acknowledged outputs and
    /// the final values. Returns the problems found.
    fn check_ledger(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let writes = self.writes();
        let mut applied: HashMap<u64, usize> = HashMap::new();
        for (key, ids) in &self.kv.ledger {
            for id in ids {
                *applied.entry(*id).or_default() += 1;
                match writes.get(id) {
                    None => problems.push(format!(
                        "key {key}: the ledger holds id {id:#x}, which no client sent"
                    )),
                    Some(w) if w.key != key => problems.push(format!(
                        "key {key}: the ledger holds id {id:#x}, a write to key {}",
                        w.key
                    )),
                    Some(_) => {}
                }
            }
        }
        for (id, n) in &applied {
            if *n > 1 {
                let what = writes.get(id).map(|w| w.show()).unwrap_or_default();
                problems.push(format!("applied {n} times: {what}"));
            }
        }
        for (id, w) in &writes {
            if w.out.is_some() && !applied.contains_key(id) {
                problems.push(format!("acknowledged but not applied (lost): {}", w.show()));
            }
        }
        // Replay each key's ledger through the model.
        for key in REGISTERS.iter().chain([&COUNTER]) {
            let ids = self.kv.ledger.get(*key).map(Vec::as_slice).unwrap_or(&[]);
            let mut state: Option<i64> = None;
            for id in ids {
                let Some(w) = writes.get(id) else { continue };
                let Kind::Write(op, _) = &w.kind else {
                    continue;
                };
                let (next, out) = linearizability::Model::step(&Register, &state, op);
                state = next;
                if let Some(acked) = &w.out
                    && *acked != out
                {
                    problems.push(format!(
                        "key {key}: in ledger order the write returns {out:?}, but the client got {acked:?}: {}",
                        w.show()
                    ));
                }
            }
            let actual = self.kv.values.get(*key).copied();
            if actual != state {
                problems.push(format!(
                    "key {key}: replaying its ledger gives {state:?}, the replicas hold {actual:?}"
                ));
            }
        }
        // The counter: acknowledged increments plus some of the unknown ones.
        let by = |r: &Record| match r.kind {
            Kind::Write(RegOp::Incr(by), _) => by,
            _ => 0,
        };
        let acked: i64 = writes
            .values()
            .filter(|w| w.key == COUNTER && w.out.is_some())
            .map(|w| by(w))
            .sum();
        let unknown_applied: i64 = writes
            .iter()
            .filter(|(id, w)| w.key == COUNTER && w.out.is_none() && applied.contains_key(id))
            .map(|(_, w)| by(w))
            .sum();
        let value = self.kv.values.get(COUNTER).copied().unwrap_or(0);
        if value != acked + unknown_applied {
            problems.push(format!(
                "counter {COUNTER} = {value}, but the acknowledged increments sum to {acked} \
                 and the unknown ones it applied to {unknown_applied}"
            ));
        }
        problems
    }

    /// The history the linearizability checker gets: acknowledged writes,
    /// unknown writes the ledger shows applied (the others never took
    /// effect: dropping them is one of the behaviours an unknown outcome
    /// allows), and linearizable reads that returned.
    fn linearizable_history(&self) -> Vec<RegOperation> {
        let applied: std::collections::HashSet<u64> =
            self.kv.ledger.values().flatten().copied().collect();
        self.history
            .iter()
            .filter_map(|r| {
                let input = match &r.kind {
                    Kind::Write(op, id) => {
                        if r.out.is_none() && !applied.contains(id) {
                            return None;
                        }
                        *op
                    }
                    Kind::LinRead => r.out.as_ref().map(|_| RegOp::Get)?,
                    Kind::LocalRead => return None,
                };
                Some(RegOperation {
                    client: r.client,
                    key: r.key.to_string(),
                    input,
                    invoke: r.invoke,
                    complete: r.complete,
                    outcome: match r.out {
                        Some(o) => Outcome::Ok(o),
                        None => Outcome::Unknown,
                    },
                    tag: match r.kind {
                        Kind::Write(_, id) => id,
                        _ => 0,
                    },
                })
            })
            .collect()
    }

    /// Local reads see values of the log, never going back on one run of
    /// a node for one client.
    fn check_local_reads(&self) -> Vec<String> {
        let writes = self.writes();
        // the values each key takes, in log order, from "never written"
        let mut values: HashMap<&str, Vec<Option<i64>>> = HashMap::new();
        for key in REGISTERS.iter().chain([&COUNTER]) {
            let mut seq = vec![None];
            let mut state = None;
            for id in self.kv.ledger.get(*key).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(Kind::Write(op, _)) = writes.get(id).map(|w| &w.kind) {
                    state = linearizability::Model::step(&Register, &state, op).0;
                    seq.push(state);
                }
            }
            values.insert(key, seq);
        }
        let mut problems = Vec::new();
        let mut position: HashMap<(u64, u64, &str), usize> = HashMap::new();
        for r in &self.history {
            let (Kind::LocalRead, Some(RegOut::Get(v))) = (&r.kind, &r.out) else {
                continue;
            };
            let seq = &values[r.key];
            let from = position.entry((r.client, r.run, r.key)).or_default();
            match seq[*from..].iter().position(|s| s == v) {
                Some(p) => *from += p,
                None => problems.push(format!(
                    "local read of a value the key never had, or an older one than this client already read on this run of the node: {}",
                    r.show()
                )),
            }
        }
        problems
    }

    fn dump(&self, extra: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "catga-faults-{}-nodes-seed-{:#x}.txt",
            self.nodes, self.given
        ));
        let mut text = String::new();
        let _ = writeln!(
            text,
            "CATGA_SEED={:#x}, {} nodes\n{extra}\n",
            self.given, self.nodes
        );
        let mut sorted: Vec<&Record> = self.history.iter().collect();
        sorted.sort_by_key(|r| (r.invoke, r.client));
        for r in sorted {
            let _ = writeln!(text, "{}", r.show());
        }
        let _ = writeln!(text, "\nfinal state: {:?}", self.kv);
        match std::fs::write(&path, text) {
            Ok(()) => format!("the whole history is in {}", path.display()),
            Err(e) => format!("could not write the history to {}: {e}", path.display()),
        }
    }
}

// --------------------------------------------------------------------- run

async fn run(settings: Settings) {
    let Settings {
        nodes,
        given,
        seed,
        ops,
        secs,
    } = settings;
    let _guard = SeedOnPanic(format!("{nodes} nodes, replay with CATGA_SEED={given:#x}"));
    println!(
        "fault test: {nodes} nodes, CATGA_SEED={given:#x}, {} ops per client{}",
        ops.map(|n| n.to_string()).unwrap_or("unbounded".into()),
        secs.map(|d| format!(", for {d:?}")).unwrap_or_default()
    );
    let mut rng = Rng(seed);
    let snapshot_every = [64, 500, 10_000][rng.below(3) as usize];
    // a short request timeout turns more writes into unknown outcomes that
    // may still be applied later
    let request_timeout = Duration::from_millis([1_500, 4_000, 10_000][rng.below(3) as usize]);
    println!("snapshot every {snapshot_every} entries, request timeout {request_timeout:?}");
    let started = std::time::Instant::now();
    let cluster = Cluster::start_opts(nodes, snapshot_every, request_timeout).await;
    cluster.leader().await;
    let clock = Clock(Instant::now());

    let slots: Vec<watch::Sender<Slot>> = (1..=nodes as u64)
        .map(|id| watch::Sender::new(Some((cluster.node(id).clone(), 0))))
        .collect();
    let deadline = secs.map(|d| Instant::now() + d);
    let shared_history: Shared<Record> = Arc::default();
    let log: Shared<String> = Arc::default();
    let mut clients = Vec::new();
    for node in 1..=nodes as u64 {
        for k in 0..CLIENTS_PER_NODE as u64 {
            let id = (node - 1) * CLIENTS_PER_NODE as u64 + k + 1;
            let ctx = ClientCtx {
                id,
                node,
                rng: rng.fork(id),
                slot: slots[node as usize - 1].subscribe(),
                clock,
                ops,
                deadline,
                seen: HashMap::new(),
                next_id: 0,
                history: shared_history.clone(),
            };
            clients.push(tokio::spawn(client(ctx)));
        }
    }
    let (done_tx, done_rx) = watch::channel(false);
    let nemesis = Nemesis {
        cluster,
        slots,
        runs: vec![0; nodes],
        rng: rng.fork(0),
        clock,
        clients_done: done_rx,
        counts: FaultCounts::default(),
        log: log.clone(),
        name: format!("{nodes} nodes"),
    };
    let nemesis = tokio::spawn(nemesis.run());
    // A watchdog, in case the cluster stops making progress: each operation
    // gives up after the request timeout, so a stuck run would take forever.
    let watchdog = Duration::from_secs(60)
        + secs.unwrap_or_default()
        + ops.map(Duration::from_secs).unwrap_or_default();
    let all_clients = async {
        for c in clients {
            c.await.expect("a client panicked");
        }
    };
    if tokio::time::timeout(watchdog, all_clients).await.is_err() {
        done_tx.send_replace(true);
        let run = Run {
            given,
            nodes,
            history: take(&shared_history),
            kv: Kv::default(),
        };
        let mut report = String::from("(no final state: the run did not finish)\nnemesis log:\n");
        for l in take(&log) {
            let _ = writeln!(report, "  {l}");
        }
        let where_ = run.dump(&report);
        panic!(
            "CATGA_SEED={given:#x} ({nodes} nodes): the clients did not finish within {watchdog:?}; \
             the cluster stopped making progress?\n{report}{where_}"
        );
    }
    let client_secs = clock.0.elapsed();
    done_tx.send_replace(true);
    let nemesis = nemesis.await.expect("the nemesis panicked");
    let counts = nemesis.counts;
    let cluster = nemesis.cluster;
    let mut history = take(&shared_history);

    // Every node is up and every link healed: one more linearizable read of
    // every key on every node, then the replicas must agree.
    cluster.leader().await;
    let final_client = 1000;
    for n in cluster.up() {
        for key in REGISTERS.iter().chain([&COUNTER]) {
            // the cluster is whole again: reads must succeed (retried while
            // a leader settles; failed attempts are unknown reads, which
            // say nothing)
            let until = Instant::now() + T;
            let (invoke, v) = loop {
                let invoke = clock.now();
                let get = Get {
                    key: key.to_string(),
                };
                match n.query(get, Consistency::Linearizable).await {
                    Ok(v) => break (invoke, v),
                    Err(e) if Instant::now() >= until => {
                        panic!("final read of {key} on node {}: {e}", n.id())
                    }
                    Err(_) => n.health_changed(Duration::from_millis(100)).await,
                }
            };
            history.push(Record {
                client: final_client + n.id(),
                node: n.id(),
                run: u64::MAX,
                key,
                kind: Kind::LinRead,
                invoke,
                complete: clock.now(),
                out: Some(RegOut::Get(v)),
                error: None,
            });
        }
    }
    let applied = cluster.assert_replicas_equal().await;
    let kv = cluster
        .node(1)
        .read_state::<Kv, _>(Kv::clone)
        .expect("the kv state is registered");
    cluster.shutdown().await;

    let run = Run {
        given,
        nodes,
        history,
        kv,
    };
    let writes = run
        .history
        .iter()
        .filter(|r| matches!(r.kind, Kind::Write(..)));
    let (acked, unknown) = writes.fold((0, 0), |(a, u), r| {
        if r.out.is_some() {
            (a + 1, u)
        } else {
            (a, u + 1)
        }
    });
    let unknown_applied = {
        let applied: std::collections::HashSet<u64> =
            run.kv.ledger.values().flatten().copied().collect();
        run.history
            .iter()
            .filter(|r| matches!(r.kind, Kind::Write(_, id) if r.out.is_none() && applied.contains(&id)))
            .count()
    };
    let reads = |k: fn(&Kind) -> bool| {
        let all = run.history.iter().filter(|r| k(&r.kind));
        let (ok, failed) = all.fold((0, 0), |(o, f), r| {
            if r.out.is_some() {
                (o + 1, f)
            } else {
                (o, f + 1)
            }
        });
        format!("{ok} ok, {failed} failed")
    };
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in &run.history {
        if let Some(e) = &r.error {
            // the error's kind: its text up to the first detail
            let kind = if e.contains("already acknowledged") {
                "already acknowledged (ApplyError::Stale)".to_string()
            } else {
                e.split(['(', ':']).next().unwrap_or(e).trim().to_string()
            };
            *errors.entry(kind).or_default() += 1;
        }
    }
    println!(
        "{nodes} nodes: clients ran {client_secs:.1?}; writes: {acked} acknowledged, {unknown} unknown \
         ({unknown_applied} of them applied); linearizable reads: {}; local reads: {}; \
         applied index {applied}; faults: {counts:?}",
        reads(|k| matches!(k, Kind::LinRead)),
        reads(|k| matches!(k, Kind::LocalRead)),
    );
    if !errors.is_empty() {
        println!("{nodes} nodes: errors by kind: {errors:?}");
    }
    // `Stale` means "already acknowledged", which a caller still waiting for
    // its answer never did: it must not happen.
    let stale = errors.keys().any(|k| k.contains("already acknowledged"));
    let mut problems = run.check_ledger();
    if stale {
        problems.push(
            "a write still in flight was refused as already acknowledged (ApplyError::Stale)"
                .into(),
        );
    }
    problems.extend(run.check_local_reads());
    let check_started = std::time::Instant::now();
    match linearizability::check(&Register, &run.linearizable_history()) {
        Ok(stats) => println!(
            "{nodes} nodes: linearizable: {} keys, {} operations ({} unknown), {} search steps, checked in {:.1?}",
            stats.keys,
            stats.ops,
            stats.unknown,
            stats.steps,
            check_started.elapsed()
        ),
        Err(failure) => problems.push(format!("not linearizable: {failure}")),
    }
    if !problems.is_empty() {
        let mut report = String::new();
        for p in &problems {
            let _ = writeln!(report, "- {p}");
        }
        let _ = writeln!(report, "nemesis log:");
        for l in take(&log) {
            let _ = writeln!(report, "  {l}");
        }
        let where_ = run.dump(&report);
        panic!(
            "CATGA_SEED={given:#x} ({nodes} nodes): {} problem(s):\n{report}{where_}",
            problems.len()
        );
    }
    println!(
        "{nodes} nodes: all checks passed in {:.1?} in all",
        started.elapsed()
    );
}

/// Mixed into the seed of the 5-node run, so that one `CATGA_SEED` runs
/// both sizes with different schedules.
const FIVE_SALT: u64 = 0x5555_0000_5555;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_under_faults_stay_linearizable() {
    run(Settings::from_env(3, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_under_faults_stay_linearizable() {
    run(Settings::from_env(5, FIVE_SALT)).await;
}

/// The checks on a run's outcome catch what they are meant to catch.
#[test]
fn the_checks_catch_lost_duplicated_and_phantom_writes() {
    let rec = |client: u64, key: &'static str, kind: Kind, at: u64, out: Option<RegOut>| Record {
        client,
        node: 1,
        run: 0,
        key,
        kind,
        invoke: at,
        complete: at + 1,
        out,
        error: None,
    };
    let history = vec![
        rec(1, "a", Kind::Write(RegOp::Set(5), 1), 0, Some(RegOut::Set)),
        rec(
            1,
            "a",
            Kind::Write(RegOp::Incr(2), 2),
            2,
            Some(RegOut::Incr(7)),
        ),
        rec(2, "a", Kind::Write(RegOp::Incr(1), 3), 3, None),
        rec(2, "a", Kind::LocalRead, 5, Some(RegOut::Get(Some(7)))),
        rec(2, "a", Kind::LocalRead, 6, Some(RegOut::Get(Some(8)))),
        rec(3, "a", Kind::LinRead, 10, Some(RegOut::Get(Some(8)))),
        rec(
            3,
            COUNTER,
            Kind::Write(RegOp::Incr(4), 4),
            11,
            Some(RegOut::Incr(4)),
        ),
    ];
    let good = Kv {
        values: [("a".to_string(), 8), (COUNTER.to_string(), 4)].into(),
        ledger: [
            ("a".to_string(), vec![1, 2, 3]),
            (COUNTER.to_string(), vec![4]),
        ]
        .into(),
    };
    let run = |kv: Kv, history: Vec<Record>| Run {
        given: 0,
        nodes: 3,
        history,
        kv,
    };
    let problems = |r: &Run| {
        let mut p = r.check_ledger();
        p.extend(r.check_local_reads());
        if let Err(e) = linearizability::check(&Register, &r.linearizable_history()) {
            p.push(e.to_string());
        }
        p
    };
    let ok = run(good.clone(), history.clone());
    assert_eq!(problems(&ok), Vec::<String>::new());
    // the unknown increment not applied: fine too, if the value agrees
    let mut kv = good.clone();
    kv.ledger.insert("a".into(), vec![1, 2]);
    kv.values.insert("a".into(), 7);
    let mut h = history.clone();
    h[4].out = Some(RegOut::Get(Some(7)));
    h[5].out = Some(RegOut::Get(Some(7)));
    assert_eq!(problems(&run(kv, h)), Vec::<String>::new());

    let expect = |kv: Kv, h: Vec<Record>, what: &str| {
        let p = problems(&run(kv, h));
        assert!(
            p.iter().any(|p| p.contains(what)),
            "expected a problem with {what:?}, got {p:#?}"
        );
    };
    // applied twice
    let mut kv = good.clone();
    kv.ledger.insert(COUNTER.into(), vec![4, 4]);
    kv.values.insert(COUNTER.into(), 8);
    expect(kv, history.clone(), "applied 2 times");
    // lost
    let mut kv = good.clone();
    kv.ledger.insert(COUNTER.into(), vec![]);
    kv.values.insert(COUNTER.into(), 0);
    expect(kv, history.clone(), "lost");
    // a phantom write
    let mut kv = good.clone();
    kv.ledger.insert(COUNTER.into(), vec![4, 99]);
    expect(kv, history.clone(), "no client sent");
    // a value the ledger does not explain
    let mut kv = good.clone();
    kv.values.insert(COUNTER.into(), 5);
    expect(kv, history.clone(), "replaying its ledger");
    // an acknowledged output the log order does not give
    let mut kv = good.clone();
    kv.ledger.insert("a".into(), vec![2, 1, 3]);
    expect(kv, history.clone(), "in ledger order");
    // a local read going back in time on one run of a node
    let mut h = history.clone();
    h[4].out = Some(RegOut::Get(Some(5)));
    expect(good.clone(), h, "older one");
    // a stale linearizable read
    let mut h = history.clone();
    h[5].out = Some(RegOut::Get(Some(5)));
    expect(good.clone(), h, "not linearizable");
}
