//! A linearizability checker for recorded histories: the Wing–Gong–Lowe
//! search with the memoization of porcupine (a set of already seen
//! `(linearized ops, model state)` pairs), over a history partitioned by
//! key (each key is an independent object, so a history is linearizable
//! if and only if every key's sub-history is).
//!
//! An operation has an invoke time, a completion time and a result: either
//! `Ok(output)` (it took effect exactly once, between its invocation and its
//! completion, and returned `output`) or [`Outcome::Unknown`] (it timed out
//! or failed: it may or may not have taken effect, at any time after its
//! invocation; its output is unconstrained). An unknown operation is
//! treated as completing at +infinity.
//!
//! When a key's history is not linearizable, [`check`] returns a
//! [`Violation`] holding the key's operations, the longest linearizable
//! prefix the search found, and a smaller *core*: a sub-history that is
//! still not linearizable, obtained only by weakening the history (cutting
//! it at an earlier time, dropping reads, turning acknowledged writes into
//! unknown ones), so the core alone proves the violation.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;

/// A sequential specification of one object.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// An operation's input.
    type Input: Clone + fmt::Debug;
    /// An operation's output.
    type Output: Clone + Eq + fmt::Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`: the new state and the output.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
    /// Whether `input` never changes the state (a read).
    fn is_read(&self, input: &Self::Input) -> bool;
}

/// The result of one operation as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// It took effect, exactly once, and returned this.
    Ok(O),
    /// It may or may not have taken effect (timeout, error, crash); if it
    /// did, at some time after its invocation, with any output.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Who issued it (for printing).
    pub client: u64,
    /// The object it works on; the history is checked per key.
    pub key: String,
    /// What it asked for.
    pub input: I,
    /// When it was invoked (nanoseconds on a monotonic clock).
    pub invoke: u64,
    /// When it completed (nanoseconds, same clock); ignored when the outcome
    /// is unknown (+infinity).
    pub complete: u64,
    /// What came back.
    pub outcome: Outcome<O>,
    /// A free tag for printing (the write's ledger id, say).
    pub tag: u64,
}

impl<I, O> Operation<I, O> {
    /// Whether the outcome is known.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    /// The completion time, `u64::MAX` for an unknown outcome.
    pub fn end(&self) -> u64 {
        match self.outcome {
            Outcome::Ok(_) => self.complete,
            Outcome::Unknown => u64::MAX,
        }
    }
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |t: u64| t as f64 / 1e6;
        match &self.outcome {
            Outcome::Ok(out) => write!(
                f,
                "[{:>11.3} .. {:>11.3} ms] client {:>3}: {:?} -> {:?}",
                ms(self.invoke),
                ms(self.complete),
                self.client,
                self.input,
                out
            )?,
            Outcome::Unknown => write!(
                f,
                "[{:>11.3} .. {:>11} ms] client {:>3}: {:?} -> unknown",
                ms(self.invoke),
                "inf",
                self.client,
                self.input
            )?,
        }
        if self.tag != 0 {
            write!(f, "  (id {:#x})", self.tag)?;
        }
        Ok(())
    }
}

/// A register holding an optional `i64`, with set, compare-and-set,
/// increment and get.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

/// An operation on a [`Register`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegOp {
    Set(i64),
    Cas { expected: i64, new: i64 },
    Incr(i64),
    Get,
}

/// The output of a [`RegOp`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegOut {
    Set,
    Cas(bool),
    /// The new value.
    Incr(i64),
    Get(Option<i64>),
}

impl fmt::Debug for RegOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegOp::Set(v) => write!(f, "set({v})"),
            RegOp::Cas { expected, new } => write!(f, "cas({expected} -> {new})"),
            RegOp::Incr(by) => write!(f, "incr({by:+})"),
            RegOp::Get => write!(f, "get"),
        }
    }
}

impl fmt::Debug for RegOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegOut::Set => write!(f, "ok"),
            RegOut::Cas(hit) => write!(f, "{hit}"),
            RegOut::Incr(v) => write!(f, "{v}"),
            RegOut::Get(Some(v)) => write!(f, "{v}"),
            RegOut::Get(None) => write!(f, "none"),
        }
    }
}

impl Model for Register {
    type State = Option<i64>;
    type Input = RegOp;
    type Output = RegOut;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(&self, state: &Option<i64>, input: &RegOp) -> (Option<i64>, RegOut) {
        match *input {
            RegOp::Set(v) => (Some(v), RegOut::Set),
            RegOp::Cas { expected, new } => {
                if *state == Some(expected) {
                    (Some(new), RegOut::Cas(true))
                } else {
                    (*state, RegOut::Cas(false))
                }
            }
            RegOp::Incr(by) => {
                let v = state.unwrap_or(0).wrapping_add(by);
                (Some(v), RegOut::Incr(v))
            }
            RegOp::Get => (*state, RegOut::Get(*state)),
        }
    }

    fn is_read(&self, input: &RegOp) -> bool {
        matches!(input, RegOp::Get)
    }
}

/// An operation on a [`Register`].
pub type RegOperation = Operation<RegOp, RegOut>;

/// An operation of a model's history.
type OpOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// How much work one key's search may do before the checker gives up.
pub const DEFAULT_MAX_STEPS: u64 = 20_000_000;

/// Counts from a successful check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (unknown reads are dropped first: they say nothing).
    pub ops: usize,
    /// Of which with an unknown outcome.
    pub unknown: usize,
    /// Search steps taken, over all keys.
    pub steps: u64,
}

/// Why a history failed the check.
pub enum Failure<M: Model> {
    /// A key's history is not linearizable.
    Violation(Violation<M>),
    /// The search for a key exceeded its budget.
    GaveUp {
        /// The key.
        key: String,
        /// Its operations.
        ops: usize,
        /// The budget.
        steps: u64,
    },
}

/// A key whose history is not linearizable.
pub struct Violation<M: Model> {
    /// The key.
    pub key: String,
    /// All operations on the key, sorted by invoke time.
    pub ops: Vec<OpOf<M>>,
    /// A sub-history of weakened operations that is still not linearizable,
    /// sorted by invoke time.
    pub core: Vec<OpOf<M>>,
    /// The longest linearizable prefix found for `ops`: indices into `ops`
    /// in linearization order, each with the state after it.
    pub longest: Vec<(usize, M::State)>,
}

impl<M: Model> fmt::Display for Violation<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: its history of {} operations is not linearizable.",
            self.key,
            self.ops.len()
        )?;
        writeln!(
            f,
            "A sub-history of {} operations that is already not linearizable (sorted by invoke time; \
             acknowledged writes it does not need are shown as unknown, reads it does not need are left out):",
            self.core.len()
        )?;
        for op in &self.core {
            writeln!(f, "  {op}")?;
        }
        writeln!(
            f,
            "The longest linearizable prefix found ({} of {} operations), with the state after each:",
            self.longest.len(),
            self.ops.len()
        )?;
        let skip = self.longest.len().saturating_sub(10);
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier operations")?;
        }
        for (i, state) in &self.longest[skip..] {
            writeln!(f, "  {}  => {:?}", self.ops[*i], state)?;
        }
        let done: HashSet<usize> = self.longest.iter().map(|(i, _)| *i).collect();
        let first_end = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, o)| !done.contains(i) && o.is_ok())
            .map(|(_, o)| o.complete)
            .min()
            .unwrap_or(u64::MAX);
        writeln!(
            f,
            "None of these (invoked before the first unlinearized completion) can go next:"
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            if !done.contains(&i) && op.invoke <= first_end {
                writeln!(f, "  {op}")?;
            }
        }
        Ok(())
    }
}

impl<M: Model> fmt::Display for Failure<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Violation(v) => v.fmt(f),
            Failure::GaveUp { key, ops, steps } => write!(
                f,
                "key {key:?}: the search over {ops} operations gave up after {steps} steps"
            ),
        }
    }
}

impl<M: Model> fmt::Debug for Failure<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks that `history` is linearizable with respect to `model`, one key
/// at a time, with the default budget.
pub fn check<M: Model>(model: &M, history: &[OpOf<M>]) -> Result<Stats, Failure<M>> {
    check_with(model, history, DEFAULT_MAX_STEPS)
}

/// [`check`] with a budget of search steps per key.
pub fn check_with<M: Model>(
    model: &M,
    history: &[OpOf<M>],
    max_steps: u64,
) -> Result<Stats, Failure<M>> {
    let mut by_key: BTreeMap<&str, Vec<OpOf<M>>> = BTreeMap::new();
    for op in history {
        // an unknown read has no effect and constrains nothing
        if !op.is_ok() && model.is_read(&op.input) {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut stats = Stats::default();
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| (o.invoke, o.end()));
        stats.keys += 1;
        stats.ops += ops.len();
        stats.unknown += ops.iter().filter(|o| !o.is_ok()).count();
        match search(model, &ops, max_steps) {
            Search::Linearizable { steps } => stats.steps += steps,
            Search::GaveUp => {
                return Err(Failure::GaveUp {
                    key: key.to_string(),
                    ops: ops.len(),
                    steps: max_steps,
                });
            }
            Search::NotLinearizable { longest, .. } => {
                let core = shrink(model, &ops);
                return Err(Failure::Violation(Violation {
                    key: key.to_string(),
                    ops,
                    core,
                    longest,
                }));
            }
        }
    }
    Ok(stats)
}

enum Search<S> {
    Linearizable {
        steps: u64,
    },
    NotLinearizable {
        longest: Vec<(usize, S)>,
        steps: u64,
    },
    GaveUp,
}

const NIL: usize = usize::MAX;

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The WGL search over one key's operations.
fn search<M: Model>(model: &M, ops: &[OpOf<M>], max_steps: u64) -> Search<M::State> {
    // Events: a call for every operation, a return for every known one (an
    // unknown operation never has to be linearized). At equal times calls go
    // first, so touching operations count as concurrent.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, i));
        if op.is_ok() {
            events.push((op.complete.max(op.invoke), 1, i));
        }
    }
    events.sort_unstable();
    // A doubly linked list over the events, with a head at index 0.
    let len = events.len() + 1;
    let mut next = vec![NIL; len];
    let mut prev = vec![NIL; len];
    let mut is_call = vec![false; len];
    let mut op_of = vec![0usize; len];
    let mut ret_of = vec![NIL; len];
    let mut call_entry = vec![NIL; ops.len()];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let e = k + 1;
        prev[e] = k;
        next[k] = e;
        op_of[e] = i;
        if kind == 0 {
            is_call[e] = true;
            call_entry[i] = e;
        } else {
            ret_of[call_entry[i]] = e;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    };

    // The set of linearized operations is kept as a Zobrist hash (the XOR
    // of a random 128-bit key per operation), so a step costs O(1) however
    // long the history; two different sets collide with probability ~2^-128.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ ops.len() as u64;
    let zobrist: Vec<u128> = (0..ops.len())
        .map(|_| (u128::from(splitmix(&mut seed)) << 64) | u128::from(splitmix(&mut seed)))
        .collect();
    let mut linearized = 0u128;
    let mut cache: HashSet<(u128, M::State)> = HashSet::new();
    // (call entry, state before it)
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    // The deepest stack seen, kept up to date incrementally: `same` is how
    // long a prefix it shares with the current stack.
    let mut longest: Vec<(usize, M::State)> = Vec::new();
    let mut longest_end = model.init();
    let mut same = 0usize;
    let mut state = model.init();
    let mut left = ops.iter().filter(|o| o.is_ok()).count();
    let mut entry = next[0];
    let mut steps = 0u64;
    while left > 0 {
        steps += 1;
        if steps > max_steps {
            return Search::GaveUp;
        }
        if entry != NIL && is_call[entry] {
            let i = op_of[entry];
            let op = &ops[i];
            let (new_state, out) = model.step(&state, &op.input);
            let fits = match &op.outcome {
                Outcome::Ok(o) => *o == out,
                // An unknown operation that changes nothing here is as good
                // as one that never took effect: leave it for later.
                Outcome::Unknown => new_state != state,
            };
            if fits && cache.insert((linearized ^ zobrist[i], new_state.clone())) {
                linearized ^= zobrist[i];
                let old = std::mem::replace(&mut state, new_state);
                stack.push((entry, old));
                unlink(&mut next, &mut prev, entry);
                if ret_of[entry] != NIL {
                    unlink(&mut next, &mut prev, ret_of[entry]);
                    left -= 1;
                }
                if stack.len() > longest.len() {
                    longest.truncate(same);
                    longest.extend(stack[same..].iter().cloned());
                    same = stack.len();
                    longest_end = state.clone();
                }
                entry = next[0];
                continue;
            }
            entry = next[entry];
        } else {
            // A known operation returned before being linearized: undo the
            // last choice and try the next one.
            let Some((e, old)) = stack.pop() else {
                // the state after each op is the state before the next one
                let mut after: Vec<M::State> =
                    longest.iter().skip(1).map(|(_, s)| s.clone()).collect();
                after.push(longest_end);
                let longest = longest
                    .iter()
                    .zip(after)
                    .map(|((e, _), s)| (op_of[*e], s))
                    .collect();
                return Search::NotLinearizable { longest, steps };
            };
            same = same.min(stack.len());
            state = old;
            let i = op_of[e];
            linearized ^= zobrist[i];
            if ret_of[e] != NIL {
                relink(&mut next, &mut prev, ret_of[e]);
                left += 1;
            }
            relink(&mut next, &mut prev, e);
            entry = next[e];
        }
    }
    Search::Linearizable { steps }
}

/// How much search the shrinking of one counterexample may do in all, and
/// in each trial. Proving a sub-history non-linearizable can be exponential
/// in its number of pending unknown writes; a trial that runs out keeps the
/// history as it was.
const SHRINK_TOTAL_STEPS: u64 = 4_000_000;
const SHRINK_TRIAL_STEPS: u64 = 200_000;

/// Whether `ops` is shown not linearizable within what is left of `budget`.
fn fails<M: Model>(model: &M, ops: &[OpOf<M>], budget: &mut u64) -> bool {
    let allowed = SHRINK_TRIAL_STEPS.min(*budget);
    if allowed == 0 {
        return false;
    }
    match search(model, ops, allowed) {
        Search::NotLinearizable { steps, .. } => {
            *budget -= steps.min(*budget);
            true
        }
        Search::Linearizable { steps } => {
            *budget -= steps.min(*budget);
            false
        }
        Search::GaveUp => {
            *budget -= allowed;
            false
        }
    }
}

/// Shrinks a non-linearizable key history by weakening it only, so that
/// what remains is still a proof of the violation.
fn shrink<M: Model>(model: &M, ops: &[OpOf<M>]) -> Vec<OpOf<M>> {
    let mut budget = SHRINK_TOTAL_STEPS;
    let budget = &mut budget;
    // 1. Cut the history at the earliest completion time at which it already
    // fails: operations invoked later are dropped, known operations still
    // running are made unknown (reads dropped).
    let cut = |t: u64| -> Vec<OpOf<M>> {
        ops.iter()
            .filter(|o| o.invoke <= t)
            .filter_map(|o| {
                if o.is_ok() && o.complete > t {
                    if model.is_read(&o.input) {
                        None
                    } else {
                        Some(Operation {
                            outcome: Outcome::Unknown,
                            ..o.clone()
                        })
                    }
                } else {
                    Some(o.clone())
                }
            })
            .collect()
    };
    let mut times: Vec<u64> = ops
        .iter()
        .filter(|o| o.is_ok())
        .map(|o| o.complete)
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut current: Vec<OpOf<M>> = ops.to_vec();
    if let Some(last) = times.len().checked_sub(1) {
        // the smallest index whose cut fails (the last one is the whole
        // history as far as known operations go)
        let (mut lo, mut hi) = (0usize, last);
        if fails(model, &cut(times[hi]), budget) {
            while lo < hi {
                let mid = (lo + hi) / 2;
                if fails(model, &cut(times[mid]), budget) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            current = cut(times[hi]);
        }
    }
    // 2. Drop reads the failure does not need (cheap while the writes are
    // still known).
    let mut k = current.len();
    while k > 0 {
        k -= 1;
        if model.is_read(&current[k].input) {
            let mut trial = current.clone();
            trial.remove(k);
            if fails(model, &trial, budget) {
                current = trial;
            }
        }
    }
    // 3. Make acknowledged writes unknown where the history still fails,
    // latest first.
    for k in (0..current.len()).rev() {
        if current[k].is_ok() && !model.is_read(&current[k].input) {
            let mut trial = current.clone();
            trial[k].outcome = Outcome::Unknown;
            if fails(model, &trial, budget) {
                current = trial;
            }
        }
    }
    // 4. Unknown operations invoked after every known one completed can be
    // linearized last: they change nothing.
    let last = current
        .iter()
        .filter(|o| o.is_ok())
        .map(|o| o.complete)
        .max()
        .unwrap_or(0);
    current.retain(|o| o.is_ok() || o.invoke <= last);
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: RegOp, invoke: u64, complete: u64, out: RegOut) -> RegOperation {
        Operation {
            client,
            key: "k".into(),
            input,
            invoke,
            complete,
            outcome: Outcome::Ok(out),
            tag: 0,
        }
    }

    fn unknown(client: u64, input: RegOp, invoke: u64) -> RegOperation {
        Operation {
            client,
            key: "k".into(),
            input,
            invoke,
            complete: 0,
            outcome: Outcome::Unknown,
            tag: 0,
        }
    }

    fn on(key: &str, mut o: RegOperation) -> RegOperation {
        o.key = key.into();
        o
    }

    fn violation(h: &[RegOperation]) -> Violation<Register> {
        match check(&Register, h) {
            Err(Failure::Violation(v)) => v,
            Err(e) => panic!("gave up: {e}"),
            Ok(s) => panic!("accepted a bad history: {s:?}"),
        }
    }

    use RegOp::*;

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, Get, 0, 1, RegOut::Get(None)),
            op(1, Set(1), 2, 3, RegOut::Set),
            op(1, Incr(2), 4, 5, RegOut::Incr(3)),
            op(
                1,
                Cas {
                    expected: 3,
                    new: 7,
                },
                6,
                7,
                RegOut::Cas(true),
            ),
            op(
                1,
                Cas {
                    expected: 3,
                    new: 9,
                },
                8,
                9,
                RegOut::Cas(false),
            ),
            op(1, Get, 10, 11, RegOut::Get(Some(7))),
        ];
        let s = check(&Register, &h).expect("linearizable");
        assert_eq!((s.keys, s.ops, s.unknown), (1, 6, 0));
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        // two overlapping writes; reads during and after see either order
        let h = vec![
            op(1, Set(1), 0, 10, RegOut::Set),
            op(2, Set(2), 1, 9, RegOut::Set),
            op(3, Get, 2, 3, RegOut::Get(Some(1))),
            op(3, Get, 4, 5, RegOut::Get(Some(2))),
            op(3, Get, 11, 12, RegOut::Get(Some(2))),
        ];
        check(&Register, &h).expect("set(1), get, set(2), get, get");
        // the read may also see the value before a concurrent write
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            op(2, Incr(5), 2, 10, RegOut::Incr(6)),
            op(3, Get, 3, 4, RegOut::Get(Some(1))),
            op(3, Get, 5, 6, RegOut::Get(Some(6))),
        ];
        check(&Register, &h).expect("linearizable");
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            op(2, Set(2), 2, 3, RegOut::Set),
            // invoked after set(2) was acknowledged, yet sees 1
            op(3, Get, 4, 5, RegOut::Get(Some(1))),
            op(3, Get, 6, 7, RegOut::Get(Some(2))),
        ];
        let v = violation(&h);
        assert_eq!(v.key, "k");
        let text = v.to_string();
        assert!(text.contains("not linearizable"), "{text}");
        // the core needs both writes and the stale read, not the last read
        assert_eq!(v.core.len(), 3, "{text}");
        assert!(v.core.iter().all(|o| o.invoke <= 4), "{text}");
        assert!(v.core.iter().filter(|o| o.is_ok()).count() >= 2, "{text}");
    }

    #[test]
    fn a_lost_increment_is_caught() {
        let h = vec![
            op(1, Set(0), 0, 1, RegOut::Set),
            op(1, Incr(1), 2, 5, RegOut::Incr(1)),
            op(2, Incr(1), 3, 6, RegOut::Incr(1)),
            op(3, Get, 7, 8, RegOut::Get(Some(1))),
        ];
        let v = violation(&h);
        assert!(v.core.len() <= 3, "{v}");
        // without the read it is still bad: both increments returned 1
        let v = violation(&h[..3]);
        assert_eq!(v.core.len(), 3, "{v}");
        // but one of them may well have returned 2
        let mut ok = h.clone();
        ok[2].outcome = Outcome::Ok(RegOut::Incr(2));
        ok[3].outcome = Outcome::Ok(RegOut::Get(Some(2)));
        check(&Register, &ok).expect("linearizable");
    }

    #[test]
    fn a_cas_that_succeeds_twice_is_caught() {
        let h = vec![
            op(1, Set(0), 0, 1, RegOut::Set),
            op(
                1,
                Cas {
                    expected: 0,
                    new: 1,
                },
                2,
                6,
                RegOut::Cas(true),
            ),
            op(
                2,
                Cas {
                    expected: 0,
                    new: 2,
                },
                3,
                7,
                RegOut::Cas(true),
            ),
        ];
        let v = violation(&h);
        assert_eq!(v.core.len(), 3, "{v}");
        let mut ok = h.clone();
        ok[2].outcome = Outcome::Ok(RegOut::Cas(false));
        check(&Register, &ok).expect("one cas wins");
    }

    #[test]
    fn unknown_ops_may_or_may_not_take_effect() {
        // an unknown write that did take effect, even long after
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            unknown(2, Set(5), 2),
            op(1, Get, 3, 4, RegOut::Get(Some(1))),
            op(1, Incr(1), 5, 6, RegOut::Incr(2)),
            op(1, Get, 100, 101, RegOut::Get(Some(5))),
        ];
        check(&Register, &h).expect("set(5) took effect after incr");
        // one that never took effect
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            unknown(2, Incr(10), 2),
            unknown(
                2,
                Cas {
                    expected: 1,
                    new: 3,
                },
                3,
            ),
            op(1, Get, 50, 51, RegOut::Get(Some(1))),
        ];
        check(&Register, &h).expect("neither took effect");
        // an unknown op cannot take effect before it was invoked
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            op(1, Get, 2, 3, RegOut::Get(Some(5))),
            unknown(2, Set(5), 4),
        ];
        let v = violation(&h);
        assert!(v.core.iter().any(|o| o.input == Get), "{v}");
        // nor twice
        let h = vec![
            op(1, Set(1), 0, 1, RegOut::Set),
            unknown(2, Incr(10), 2),
            op(1, Get, 3, 4, RegOut::Get(Some(11))),
            op(1, Get, 5, 6, RegOut::Get(Some(21))),
        ];
        violation(&h);
        // unknown reads are ignored
        let h = vec![op(1, Set(1), 0, 1, RegOut::Set), unknown(2, Get, 2)];
        let s = check(&Register, &h).expect("linearizable");
        assert_eq!(s.ops, 1);
    }

    #[test]
    fn keys_are_independent() {
        let h = vec![
            on("a", op(1, Set(1), 0, 1, RegOut::Set)),
            on("b", op(2, Set(2), 2, 3, RegOut::Set)),
            on("a", op(3, Get, 4, 5, RegOut::Get(Some(1)))),
            on("b", op(3, Get, 4, 5, RegOut::Get(Some(2)))),
        ];
        let s = check(&Register, &h).expect("linearizable");
        assert_eq!(s.keys, 2);
        let mut bad = h.clone();
        bad[3].outcome = Outcome::Ok(RegOut::Get(Some(1)));
        let v = violation(&bad);
        assert_eq!(v.key, "b");
        assert!(v.ops.iter().all(|o| o.key == "b"));
    }

    #[test]
    fn the_shrunk_core_of_a_long_history_is_small() {
        // a long correct history of a counter, then one stale read
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..200i64 {
            h.push(op((i % 3) as u64, Incr(1), t, t + 3, RegOut::Incr(i + 1)));
            h.push(op(9, Get, t + 4, t + 5, RegOut::Get(Some(i + 1))));
            t += 10;
        }
        check(&Register, &h).expect("linearizable");
        h.push(op(9, Get, t + 1, t + 2, RegOut::Get(Some(150))));
        let v = violation(&h);
        // a counter's value depends on every increment before it, so the
        // increments stay; the other reads go
        assert!(v.core.len() <= 201, "{v}");
        assert!(
            v.core
                .iter()
                .any(|o| o.outcome == Outcome::Ok(RegOut::Get(Some(150))) && o.invoke == t + 1),
            "{v}"
        );
        assert!(v.longest.len() >= 400, "{}", v.longest.len());
    }

    #[test]
    fn many_concurrent_unknown_writes_stay_tractable() {
        // 12 clients each lose an increment (unknown), and reads pin which
        // of them took effect
        let mut h = vec![op(0, Set(0), 0, 1, RegOut::Set)];
        for c in 0..12u64 {
            h.push(unknown(c + 1, Incr(1 << c), 2 + c));
        }
        // took effect: the even ones
        let sum: i64 = (0..12).step_by(2).map(|c| 1i64 << c).sum();
        h.push(op(20, Get, 100, 101, RegOut::Get(Some(sum))));
        let mut t = 200;
        for i in 0..50 {
            h.push(op(21, Incr(1), t, t + 1, RegOut::Incr(sum + i + 1)));
            t += 2;
        }
        let s = check(&Register, &h).expect("linearizable");
        assert!(s.steps < 1_000_000, "{s:?}");
    }

    /// A tiny seeded generator for the randomized tests.
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            splitmix(&mut self.0) % n
        }
        fn op(&mut self) -> RegOp {
            match self.below(4) {
                0 => Set(self.below(3) as i64),
                1 => Cas {
                    expected: self.below(3) as i64,
                    new: self.below(3) as i64,
                },
                2 => Incr(1 + self.below(2) as i64),
                _ => Get,
            }
        }
        fn out(&mut self, op: &RegOp) -> RegOut {
            match op {
                Set(_) => RegOut::Set,
                Cas { .. } => RegOut::Cas(self.below(2) == 0),
                Incr(_) => RegOut::Incr(self.below(5) as i64),
                Get => RegOut::Get(match self.below(4) {
                    0 => None,
                    v => Some(v as i64),
                }),
            }
        }
    }

    /// Linearizable by brute force: some subset of the unknown ops and some
    /// order of them with every known op, respecting real time, explains
    /// every known output.
    fn brute_force(h: &[RegOperation]) -> bool {
        fn go(h: &[RegOperation], done: &mut Vec<bool>, state: Option<i64>) -> bool {
            if h.iter().zip(done.iter()).all(|(o, d)| *d || !o.is_ok()) {
                return true;
            }
            for i in 0..h.len() {
                if done[i] {
                    continue;
                }
                // i may go next only if no pending op completed before it began
                let blocked = h
                    .iter()
                    .enumerate()
                    .any(|(j, o)| !done[j] && j != i && o.is_ok() && o.complete < h[i].invoke);
                if blocked {
                    continue;
                }
                let (next, out) = Register.step(&state, &h[i].input);
                if let Outcome::Ok(want) = &h[i].outcome
                    && *want != out
                {
                    continue;
                }
                done[i] = true;
                let ok = go(h, done, next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut g = Gen(7);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..4000 {
            let n = 1 + g.below(6) as usize;
            let h: Vec<RegOperation> = (0..n)
                .map(|c| {
                    let input = g.op();
                    let invoke = g.below(12);
                    let complete = invoke + g.below(6);
                    if g.below(5) == 0 {
                        unknown(c as u64, input, invoke)
                    } else {
                        let out = g.out(&input);
                        op(c as u64, input, invoke, complete, out)
                    }
                })
                .collect();
            let expected = brute_force(&h);
            let got = check(&Register, &h);
            assert_eq!(
                got.is_ok(),
                expected,
                "brute force says {expected} for {h:#?}: {:?}",
                got.err()
            );
            if expected { yes += 1 } else { no += 1 }
        }
        // both kinds were tried
        assert!(yes > 200 && no > 200, "{yes} linearizable, {no} not");
    }

    #[test]
    fn accepts_random_histories_generated_from_a_linearization() {
        // clients run ops that take effect at a random point inside their
        // interval; some lose their answer (unknown), some never happen
        let mut g = Gen(11);
        for round in 0..200 {
            let mut state = None;
            let mut h = Vec::new();
            let mut t = 0u64;
            for c in 0..60u64 {
                let input = g.op();
                let point = t + 1 + g.below(3);
                let invoke = point - g.below(3).min(point);
                let complete = point + g.below(30);
                t = point;
                let lost = g.below(8) == 0;
                if lost && g.below(2) == 0 {
                    // never took effect
                    h.push(unknown(c, input, invoke));
                    continue;
                }
                let (next, out) = Register.step(&state, &input);
                state = next;
                h.push(if lost {
                    unknown(c, input, invoke)
                } else {
                    op(c, input, invoke, complete, out)
                });
            }
            if let Err(e) = check(&Register, &h) {
                panic!("round {round}: a history with a linearization was refused: {e}");
            }
        }
    }
}
