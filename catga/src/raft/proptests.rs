//! Property tests for every decoder on the network and disk path that the
//! transport's own tests do not cover: RPC bodies and their replies, log
//! entries and log metadata, state machine snapshots (in memory and the
//! on-disk snapshot file), and `Machine::apply` on arbitrary envelopes.
//!
//! Bad input must be an error, never a panic, a stack overflow or a partial
//! change.
//!
//! Over 500 lines on purpose: one property per decoder, each small; split
//! by decoder they would share most of their generators.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::OnceLock;

    use openraft::alias::SnapshotMetaOf;
    use openraft::errors::RaftError;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{BasicNode, EntryPayload, Membership, StoredMembership};
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use crate::dedup::Dedup;
    use crate::machine::{Applied, EntryKind, Envelope, Machine};
    use crate::prelude::*;
    use crate::raft::log_store::LogStore;
    use crate::raft::state_machine::SmStore;
    use crate::raft::wal::{Record, encode_record};
    use crate::raft::wire::{Redirect, Rpc, decode, encode};
    use crate::raft::{Entry, LogId, TC, Vote};

    // ---- a tiny domain, so that the machine has a state, a command, an event

    #[state(name = "proptests.tally")]
    #[derive(Default, Debug, Clone, PartialEq)]
    struct Tally {
        counts: BTreeMap<String, u64>,
        draws: Vec<u64>,
    }

    #[command(name = "proptests.Add")]
    struct Add {
        key: String,
        by: u64,
    }

    #[event(name = "proptests.Added")]
    struct Added {
        key: String,
        total: u64,
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum TallyError {
        EmptyKey,
        Overflow,
    }

    #[handler]
    fn add(cmd: Add, t: &mut Tally, ctx: &mut CommandContext) -> Result<u64, TallyError> {
        if cmd.key == "panic" {
            // a change before the panic stays (the same on every replica)
            t.draws.push(ctx.log_index());
            panic!("asked to panic");
        }
        if cmd.key.is_empty() {
            return Err(TallyError::EmptyKey);
        }
        let c = t.counts.entry(cmd.key.clone()).or_default();
        *c = c.checked_add(cmd.by).ok_or(TallyError::Overflow)?;
        let total = *c;
        t.draws
            .push(ctx.random_u64() ^ ctx.timestamp_ms() ^ ctx.client_id());
        ctx.publish(Added {
            key: cmd.key,
            total,
        });
        Ok(total)
    }

    const CASES: u32 = 512;

    // ---- helpers

    /// `bytes` with some bytes flipped, then cut and/or spliced.
    fn mutate(
        mut bytes: Vec<u8>,
        flips: &[(prop::sample::Index, u8)],
        cut: Option<prop::sample::Index>,
        splice: &Option<(prop::sample::Index, Vec<u8>)>,
    ) -> Vec<u8> {
        if !bytes.is_empty() {
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= b;
            }
        }
        if let Some((at, junk)) = splice {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, junk.iter().copied());
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    }

    /// Bytes to flip, where to cut, what to splice in where (see [`mutate`]).
    type Mutation = (
        Vec<(prop::sample::Index, u8)>,
        Option<prop::sample::Index>,
        Option<(prop::sample::Index, Vec<u8>)>,
    );

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        (
            prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..6),
            prop::option::of(any::<prop::sample::Index>()),
            prop::option::of((
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 1..16),
            )),
        )
    }

    /// Random bytes, biased towards msgpack headers so the decoder gets
    /// past the first byte more often.
    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            1 => prop::sample::select(vec![
                0x80, 0x81, 0x82, 0x83, 0x90, 0x91, 0x92, 0x93, 0x94, 0xa4, 0xa5, 0xa6, 0xc0,
                0xc2, 0xc3, 0xc4, 0xc5, 0xcc, 0xcd, 0xce, 0xcf, 0xd9, 0xdc, 0xdd, 0xde, 0xdf,
                0xff,
            ]),
        ];
        prop::collection::vec(byte, 0..512)
    }

    fn arb_term() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0..50u64, 1 => any::<u64>()]
    }

    fn arb_log_id() -> impl Strategy<Value = LogId> {
        (
            arb_term(),
            0..5u64,
            prop_oneof![4 => 0..1000u64, 1 => any::<u64>()],
        )
            .prop_map(|(term, node_id, index)| LogId::new(LeaderId { term, node_id }, index))
    }

    fn arb_vote() -> impl Strategy<Value = Vote> {
        (arb_term(), 0..5u64, any::<bool>()).prop_map(|(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        })
    }

    fn arb_membership() -> impl Strategy<Value = Membership<u64, BasicNode>> {
        prop::collection::btree_set(0..6u64, 1..4).prop_map(|ids| {
            let nodes: BTreeMap<u64, BasicNode> = ids
                .iter()
                .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
                .collect();
            Membership::new(vec![ids.into_iter().collect::<BTreeSet<u64>>()], nodes)
                .expect("a valid membership")
        })
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let kind = prop_oneof![4 => Just(EntryKind::Command), 1 => Just(EntryKind::Event)];
        let name = prop_oneof![
            6 => Just("proptests.Add".to_string()),
            1 => Just("proptests.Added".to_string()),
            1 => Just("proptests.tally".to_string()),
            2 => ".{0,12}",
        ];
        let key = prop_oneof![
            3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string),
            1 => Just(String::new()),
            1 => Just("panic".to_string()),
            1 => ".{0,6}",
        ];
        let by = prop_oneof![4 => 0..100u64, 1 => any::<u64>()];
        let valid =
            (key, by).prop_map(|(key, by)| rmp_serde::to_vec_named(&Add { key, by }).unwrap());
        let payload = prop_oneof![
            4 => valid.clone(),
            1 => (valid, arb_mutation()).prop_map(|(b, (f, c, s))| mutate(b, &f, c, &s)),
            1 => prop::collection::vec(any::<u8>(), 0..48),
        ];
        (
            kind,
            name,
            payload,
            0..4u64,
            0..24u64,
            prop_oneof![4 => 0..12u64, 1 => any::<u64>()],
            prop_oneof![6 => 0..5_000u64, 1 => any::<u64>()],
        )
            .prop_map(
                |(kind, name, payload, client, seq, ack_below, time_ms)| Envelope {
                    kind,
                    name,
                    payload,
                    client,
                    seq,
                    ack_below,
                    time_ms,
                    key: None,
                },
            )
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            1 => Just(EntryPayload::Blank),
            4 => arb_envelope().prop_map(EntryPayload::Normal),
            1 => arb_membership().prop_map(EntryPayload::Membership),
        ];
        (arb_log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
    }

    fn arb_meta() -> impl Strategy<Value = SnapshotMetaOf<TC>> {
        (
            prop::option::of(arb_log_id()),
            prop::option::of(arb_log_id()),
            arb_membership(),
        )
            .prop_map(|(last_log_id, m_id, m)| SnapshotMetaOf::<TC> {
                last_log_id,
                last_membership: StoredMembership::new(m_id, m),
            })
    }

    /// An encoded, valid RPC body (`Rpc` is neither `Debug` nor `Clone`, so
    /// the strategy yields its encoding).
    fn arb_rpc() -> impl Strategy<Value = Vec<u8>> {
        let rpc = prop_oneof![
            (
                arb_vote(),
                prop::option::of(arb_log_id()),
                prop::collection::vec(arb_entry(), 0..4),
                prop::option::of(arb_log_id()),
            )
                .prop_map(|(vote, prev_log_id, entries, leader_commit)| {
                    RpcCase(Rpc::Append(AppendEntriesRequest {
                        vote,
                        prev_log_id,
                        entries,
                        leader_commit,
                    }))
                }),
            (arb_vote(), prop::option::of(arb_log_id()), any::<bool>()).prop_map(
                |(vote, last, transfer)| {
                    let mut req = VoteRequest::new(vote, last);
                    req.leadership_transfer = transfer;
                    RpcCase(Rpc::Vote(req))
                }
            ),
            (
                arb_vote(),
                arb_meta(),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(vote, meta, data)| RpcCase(Rpc::Snapshot {
                    vote,
                    meta,
                    data
                })),
            arb_envelope().prop_map(|e| RpcCase(Rpc::Write(e))),
            prop::collection::vec(arb_envelope(), 0..4).prop_map(|es| RpcCase(Rpc::WriteMany(es))),
            Just(()).prop_map(|_| RpcCase(Rpc::ReadIndex)),
            (any::<u64>(), ".{0,24}").prop_map(|(id, addr)| RpcCase(Rpc::AddNode { id, addr })),
            any::<u64>().prop_map(|id| RpcCase(Rpc::RemoveNode { id })),
        ];
        rpc.prop_map(|r: RpcCase| encode(&r.0).expect("an rpc encodes").to_vec())
    }

    /// Carries a generated `Rpc` through proptest's `Debug + Clone` bounds
    /// until it is encoded.
    struct RpcCase(Rpc);

    impl std::fmt::Debug for RpcCase {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", encode(&self.0))
        }
    }

    impl Clone for RpcCase {
        fn clone(&self) -> Self {
            RpcCase(decode(&encode(&self.0).expect("encodes")).expect("decodes"))
        }
    }

    /// Decodes `bytes` as every RPC body and every reply a node decodes.
    fn decode_everything(bytes: &[u8]) {
        if let Ok(rpc) = decode::<Rpc>(bytes) {
            // whatever decodes, encodes again
            encode(&rpc).expect("a decoded rpc re-encodes");
        }
        let _ = decode::<Result<AppendEntriesResponse<TC>, RaftError<TC>>>(bytes);
        let _ = decode::<Result<VoteResponse<TC>, RaftError<TC>>>(bytes);
        let _ = decode::<Result<SnapshotResponse<TC>, String>>(bytes);
        let _ = decode::<Redirect<Applied>>(bytes);
        let _ = decode::<Vec<Redirect<Applied>>>(bytes);
        let _ = decode::<Redirect<LogId>>(bytes);
        let _ = decode::<Redirect<()>>(bytes);
    }

    /// Decodes `bytes` as everything the log store reads from disk.
    fn decode_log_records(bytes: &[u8]) {
        if let Ok(e) = rmp_serde::from_slice::<Entry>(bytes) {
            rmp_serde::to_vec(&e).expect("a decoded entry re-encodes");
        }
        let _ = rmp_serde::from_slice::<Vote>(bytes);
        let _ = rmp_serde::from_slice::<LogId>(bytes);
    }

    /// A machine that has applied `envs` at indexes 1, 2, ...
    fn machine_after(envs: &[Envelope]) -> (Machine, Vec<Applied>) {
        let mut m = Machine::new().expect("registry");
        let out = envs
            .iter()
            .enumerate()
            .map(|(i, e)| m.apply(i as u64 + 1, e))
            .collect();
        (m, out)
    }

    /// The same layout as the machine's snapshot, to build snapshots that
    /// decode but are wrong in meaning (unknown states, bad state bytes,
    /// another format).
    #[derive(Serialize)]
    struct SnapshotLike {
        format: u32,
        last_applied: u64,
        states: Vec<(String, serde_bytes::ByteBuf)>,
        dedup: Dedup,
    }

    fn arb_snapshot_like() -> impl Strategy<Value = Vec<u8>> {
        let tally_bytes = prop_oneof![
            2 => (prop::collection::btree_map(".{0,4}", any::<u64>(), 0..4),
                  prop::collection::vec(any::<u64>(), 0..4))
                .prop_map(|(counts, draws)| rmp_serde::to_vec_named(&Tally { counts, draws }).unwrap()),
            1 => prop::collection::vec(any::<u8>(), 0..24),
        ];
        let state = (
            prop_oneof![4 => Just("proptests.tally".to_string()), 1 => ".{0,12}"],
            tally_bytes,
        )
            .prop_map(|(n, b)| (n, serde_bytes::ByteBuf::from(b)));
        let dedup = prop::collection::vec((0..4u64, 0..8u64, 0..8u64, any::<u64>()), 0..6)
            .prop_map(|reqs| {
                let mut d = Dedup::default();
                for (client, seq, ack, time) in reqs {
                    if d.check(client, seq, ack, time) == crate::dedup::Check::Apply {
                        d.record(client, seq, Ok(seq.to_be_bytes().to_vec()));
                    }
                }
                d
            });
        (
            prop_oneof![4 => Just(1u32), 1 => any::<u32>()],
            any::<u64>(),
            prop::collection::vec(state, 0..3),
            dedup,
        )
            .prop_map(|(format, last_applied, states, dedup)| {
                rmp_serde::to_vec_named(&SnapshotLike {
                    format,
                    last_applied,
                    states,
                    dedup,
                })
                .unwrap()
            })
    }

    /// Restores `bytes` into `m`: an error leaves `m` exactly as it was; a
    /// success leaves a machine whose snapshot restores to itself.
    fn check_restore(m: &mut Machine, bytes: &[u8]) -> Result<(), TestCaseError> {
        let before = m.snapshot().expect("snapshot");
        let before_applied = m.last_applied();
        match m.restore(bytes) {
            Err(_) => {
                prop_assert_eq!(m.snapshot().expect("snapshot"), before, "changed on error");
                prop_assert_eq!(m.last_applied(), before_applied);
            }
            Ok(()) => {
                let again = m.snapshot().expect("a restored machine snapshots");
                let mut fresh = Machine::new().expect("registry");
                fresh.restore(&again).expect("its own snapshot restores");
                prop_assert_eq!(fresh.snapshot().expect("snapshot"), again);
                // and it keeps applying
                let env = Envelope {
                    kind: EntryKind::Command,
                    name: "proptests.Add".into(),
                    payload: rmp_serde::to_vec_named(&Add {
                        key: "after".into(),
                        by: 1,
                    })
                    .unwrap(),
                    client: 99,
                    seq: 1,
                    ack_below: 1,
                    time_ms: 1,
                    key: None,
                };
                let _ = m.apply(m.last_applied().saturating_add(1), &env);
            }
        }
        Ok(())
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        })
    }

    fn open_store(dir: &std::path::Path) -> std::io::Result<SmStore> {
        let events = crate::raft::events::EventLog::open(dir)?;
        let log = crate::raft::log_store::LogStore::open(dir, 1 << 20)?;
        SmStore::open(dir.to_path_buf(), events, log)
    }

    /// A genuine `snapshot.bin` (as a node writes it) after `envs`.
    fn snapshot_file(envs: &[Envelope], meta: &SnapshotMetaOf<TC>) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = open_store(dir.path()).expect("open an empty store");
        {
            let mut g = sm.shared.inner.write();
            for (i, e) in envs.iter().enumerate() {
                g.machine.apply(i as u64 + 1, e);
            }
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
        }
        runtime()
            .block_on(sm.build_snapshot())
            .expect("build a snapshot");
        std::fs::read(dir.path().join("snapshot.bin")).expect("the snapshot file")
    }

    // ---- RPC bodies

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES * 2))]

        #[test]
        fn random_bytes_never_panic_the_rpc_decoders(bytes in arb_bytes()) {
            decode_everything(&bytes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn rpcs_round_trip(bytes in arb_rpc()) {
            let back: Rpc = decode(&bytes).unwrap();
            prop_assert_eq!(encode(&back).unwrap(), bytes);
        }

        #[test]
        fn mutated_rpcs_never_panic_the_decoders(rpc in arb_rpc(), (flips, cut, splice) in arb_mutation()) {
            let bytes = mutate(rpc, &flips, cut, &splice);
            decode_everything(&bytes);
        }

        #[test]
        fn mutated_replies_never_panic_the_decoders(
            vote in arb_vote(),
            last in prop::option::of(arb_log_id()),
            granted in any::<bool>(),
            env in arb_envelope(),
            (flips, cut, splice) in arb_mutation(),
        ) {
            let (_, applied) = machine_after(std::slice::from_ref(&env));
            let replies = [
                encode(&Ok::<_, RaftError<TC>>(VoteResponse::<TC>::new(vote, last, granted))).unwrap(),
                encode(&Ok::<_, RaftError<TC>>(AppendEntriesResponse::<TC>::Success)).unwrap(),
                encode(&Ok::<_, RaftError<TC>>(AppendEntriesResponse::<TC>::HigherVote(vote))).unwrap(),
                encode(&Ok::<_, String>(SnapshotResponse::<TC>::new(vote))).unwrap(),
                encode(&Redirect::Ok(applied[0].clone())).unwrap(),
                encode(&vec![
                    Redirect::Ok(applied[0].clone()),
                    Redirect::NotLeader(None),
                    Redirect::Unknown("lost".into()),
                ])
                .unwrap(),
                encode(&Redirect::<LogId>::NotLeader(Some(3))).unwrap(),
                encode(&last.map_or(Redirect::Unknown("?".into()), Redirect::Ok)).unwrap(),
            ];
            for r in replies {
                decode_everything(&mutate(r.to_vec(), &flips, cut, &splice));
            }
        }
    }

    /// Builds `{"Write": {"junk": [[[[ ... ]]]]}}`: an unknown field (skipped,
    /// as it must be for upgrades) nested `depth` levels deep.
    fn deeply_nested_write(depth: usize, open: u8) -> Vec<u8> {
        let mut b = vec![0x81, 0xa5];
        b.extend_from_slice(b"Write");
        b.extend_from_slice(&[0x81, 0xa4]);
        b.extend_from_slice(b"junk");
        b.extend(std::iter::repeat_n(open, depth));
        b.push(0xc0);
        b
    }

    /// Decodes deeply nested bodies on a thread with a tokio worker's stack
    /// (2 MiB): the server decodes request bodies there.
    fn decode_deep_bodies_on_a_worker_sized_stack() -> bool {
        let mut inputs = vec![
            deeply_nested_write(100_000, 0x91),
            deeply_nested_write(1_000, 0x91),
        ];
        // maps nest through their values: {"k": {"k": ...}}
        let mut maps = deeply_nested_write(0, 0x91);
        maps.pop();
        for _ in 0..1_000 {
            maps.extend_from_slice(&[0x81, 0xa1, b'k']);
        }
        maps.push(0xc0);
        inputs.push(maps);
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                inputs.iter().all(|b| {
                    decode::<Rpc>(b).is_err()
                        && crate::codec::decode::<Entry>(b, crate::codec::INTERNAL_DEPTH).is_err()
                })
            })
            .expect("spawn")
            .join()
            .unwrap_or(false)
    }

    #[test]
    fn deeply_nested_rpc_bodies_do_not_overflow_a_worker_stack() {
        // A stack overflow aborts the whole process, so the decoding runs in
        // a child process (this test binary, running only this test).
        const CHILD: &str = "CATGA_PROPTESTS_DEEP_NESTING_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert!(decode_deep_bodies_on_a_worker_sized_stack(), "accepted");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "raft::proptests::tests::deeply_nested_rpc_bodies_do_not_overflow_a_worker_stack",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        assert!(
            out.status.success(),
            "decoding a ~1 KiB request body nested 1000 levels deep crashed the \
             decoder on a 2 MiB stack ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // ---- log entries and log metadata

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn random_bytes_never_panic_the_log_decoders(bytes in arb_bytes()) {
            decode_log_records(&bytes);
        }

        #[test]
        fn log_entries_round_trip(e in arb_entry()) {
            let bytes = rmp_serde::to_vec(&e).unwrap();
            let back: Entry = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn mutated_log_records_never_panic_the_decoders(
            e in arb_entry(),
            vote in arb_vote(),
            id in arb_log_id(),
            (flips, cut, splice) in arb_mutation(),
        ) {
            for bytes in [
                rmp_serde::to_vec(&e).unwrap(),
                rmp_serde::to_vec(&vote).unwrap(),
                rmp_serde::to_vec(&id).unwrap(),
            ] {
                decode_log_records(&mutate(bytes, &flips, cut, &splice));
            }
        }
    }

    /// A log directory holding one segment with `records`, then `tail`.
    fn log_dir(records: &[Record], tail: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let mut bytes = Vec::new();
        for r in records {
            encode_record(r, &mut bytes);
        }
        bytes.extend_from_slice(tail);
        std::fs::write(dir.path().join("log").join(format!("{:020}.wal", 1)), bytes).unwrap();
        dir
    }

    /// Opens the log store in `dir` (and closes it again): Ok or Err, never
    /// a panic.
    fn open_log(dir: &std::path::Path) -> std::io::Result<()> {
        LogStore::open(dir, 1 << 20).map(|log| log.close())
    }

    proptest! {
        // each case writes and replays a log
        #![proptest_config(ProptestConfig::with_cases(CASES / 4))]

        #[test]
        fn a_log_with_intact_records_but_bad_payloads_never_panics_on_open(
            entries in prop::collection::vec(arb_entry(), 0..6),
            vote in arb_vote(),
            committed in arb_log_id(),
            random in arb_bytes(),
            which in 0..4usize,
            (flips, cut, splice) in arb_mutation(),
        ) {
            // the genuine log opens
            let mut records: Vec<Record> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| Record::Entry(i as u64 + 1, rmp_serde::to_vec(e).unwrap()))
                .collect();
            records.push(Record::Vote(rmp_serde::to_vec(&vote).unwrap()));
            records.push(Record::Committed(rmp_serde::to_vec(&committed).unwrap()));
            let dir = log_dir(&records, &[]);
            prop_assert!(open_log(dir.path()).is_ok());
            // one payload replaced by random bytes or mutated; the records
            // stay intact (their checksums match), so only the payload
            // decoders stand between the bytes and the node
            let bad = |b: &[u8]| if which % 2 == 0 {
                random.clone()
            } else {
                mutate(b.to_vec(), &flips, cut, &splice)
            };
            let i = which.min(records.len() - 1);
            records[i] = match &records[i] {
                Record::Entry(n, b) => Record::Entry(*n, bad(b)),
                Record::Vote(b) => Record::Vote(bad(b)),
                Record::Committed(b) => Record::Committed(bad(b)),
                other => other.clone(),
            };
            records.push(Record::Purge(0, bad(&rmp_serde::to_vec(&committed).unwrap())));
            let dir = log_dir(&records, &[]);
            let _ = open_log(dir.path());
        }

        #[test]
        fn a_log_with_a_corrupt_segment_never_panics_on_open(
            entries in prop::collection::vec(arb_entry(), 0..4),
            tail in arb_bytes(),
            (flips, cut, splice) in arb_mutation(),
        ) {
            let records: Vec<Record> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| Record::Entry(i as u64 + 1, rmp_serde::to_vec(e).unwrap()))
                .collect();
            // garbage after intact records (a torn tail, or worse)
            let dir = log_dir(&records, &tail);
            let _ = open_log(dir.path());
            // the whole segment mutated
            let mut bytes = Vec::new();
            for r in &records {
                encode_record(r, &mut bytes);
            }
            let dir = log_dir(&[], &mutate(bytes, &flips, cut, &splice));
            let _ = open_log(dir.path());
        }
    }

    // ---- snapshots

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn random_snapshots_are_refused_without_change(
            envs in prop::collection::vec(arb_envelope(), 0..8),
            bytes in arb_bytes(),
        ) {
            let (mut m, _) = machine_after(&envs);
            check_restore(&mut m, &bytes)?;
        }

        #[test]
        fn mutated_and_truncated_snapshots_never_panic_and_never_half_restore(
            source in prop::collection::vec(arb_envelope(), 0..12),
            target in prop::collection::vec(arb_envelope(), 0..6),
            (flips, cut, splice) in arb_mutation(),
        ) {
            let (src, _) = machine_after(&source);
            let snap = src.snapshot().unwrap();
            // unmutated: restores to an equal machine
            let (mut m, _) = machine_after(&target);
            m.restore(&snap).unwrap();
            prop_assert_eq!(m.snapshot().unwrap(), snap.clone());
            // mutated
            let (mut m, _) = machine_after(&target);
            check_restore(&mut m, &mutate(snap, &flips, cut, &splice))?;
        }

        #[test]
        fn snapshots_that_decode_but_are_wrong_are_refused_without_change(
            target in prop::collection::vec(arb_envelope(), 0..6),
            snap in arb_snapshot_like(),
        ) {
            let (mut m, _) = machine_after(&target);
            check_restore(&mut m, &snap)?;
        }
    }

    proptest! {
        // each case writes a file
        #![proptest_config(ProptestConfig::with_cases(CASES / 8))]

        #[test]
        fn bad_snapshot_files_on_disk_are_errors(
            envs in prop::collection::vec(arb_envelope(), 0..6),
            meta in arb_meta(),
            random in arb_bytes(),
            (flips, cut, splice) in arb_mutation(),
        ) {
            let good = snapshot_file(&envs, &meta);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snapshot.bin");
            // the genuine file opens and restores the machine
            std::fs::write(&path, &good).unwrap();
            let sm = open_store(dir.path()).expect("a genuine snapshot file opens");
            let (want, _) = machine_after(&envs);
            prop_assert_eq!(
                sm.shared.inner.read().machine.snapshot().unwrap(),
                want.snapshot().unwrap()
            );
            prop_assert_eq!(sm.shared.inner.read().last_applied, meta.last_log_id);
            drop(sm);
            for bytes in [random.clone(), mutate(good.clone(), &flips, cut, &splice)] {
                std::fs::write(&path, &bytes).unwrap();
                // Ok or Err, never a panic
                let _ = open_store(dir.path());
            }
        }

        #[test]
        fn a_bad_installed_snapshot_is_an_error_and_changes_nothing(
            envs in prop::collection::vec(arb_envelope(), 0..6),
            meta in arb_meta(),
            bytes in arb_bytes(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = open_store(dir.path()).unwrap();
            {
                let mut g = sm.shared.inner.write();
                for (i, e) in envs.iter().enumerate() {
                    g.machine.apply(i as u64 + 1, e);
                }
            }
            let before = sm.shared.inner.read().machine.snapshot().unwrap();
            let path = dir.path().join("received");
            std::fs::write(&path, &bytes).unwrap();
            let file = crate::raft::snapshot_file::SnapFile::whole(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap();
            let r = runtime().block_on(sm.install_snapshot(&meta, file));
            let g = sm.shared.inner.read();
            if r.is_err() {
                prop_assert_eq!(g.machine.snapshot().unwrap(), before);
                prop_assert_eq!(g.last_applied, None);
                prop_assert!(!dir.path().join("snapshot.bin").exists());
            } else {
                prop_assert_eq!(g.last_applied, meta.last_log_id);
            }
        }
    }

    // ---- apply

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn apply_never_panics_and_is_deterministic(
            envs in prop::collection::vec(arb_envelope(), 0..40),
        ) {
            let (a, out_a) = machine_after(&envs);
            let (b, out_b) = machine_after(&envs);
            prop_assert_eq!(out_a, out_b);
            prop_assert_eq!(a.snapshot().unwrap(), b.snapshot().unwrap());
            prop_assert_eq!(a.last_applied(), envs.len() as u64);
            // a replica restored from a snapshot taken half-way ends equal
            let half = envs.len() / 2;
            let (h, _) = machine_after(&envs[..half]);
            let mut c = Machine::new().unwrap();
            c.restore(&h.snapshot().unwrap()).unwrap();
            for (i, e) in envs.iter().enumerate().skip(half) {
                c.apply(i as u64 + 1, e);
            }
            prop_assert_eq!(c.snapshot().unwrap(), a.snapshot().unwrap());
        }

        #[test]
        fn a_replayed_envelope_is_answered_from_the_cache(
            envs in prop::collection::vec(arb_envelope(), 1..30),
        ) {
            // every entry twice in a row (a retried request): the state is as
            // if each was applied once and the repeat gets the same response
            let mut once = Machine::new().unwrap();
            let mut twice = Machine::new().unwrap();
            for (i, e) in envs.iter().enumerate() {
                let first = once.apply(i as u64 + 1, e);
                let a = twice.apply(2 * i as u64 + 1, e);
                let b = twice.apply(2 * i as u64 + 2, e);
                prop_assert_eq!(&a.response, &first.response);
                prop_assert_eq!(&b.response, &a.response);
                prop_assert!(b.events.is_empty(), "a repeat publishes nothing");
            }
            // (only the counts: the handler's draws depend on the log index)
            prop_assert_eq!(
                once.state::<Tally>().map(|t| &t.counts),
                twice.state::<Tally>().map(|t| &t.counts)
            );
        }
    }
}
