//! Bad input on the wire never hurts a node.
//!
//! Thousands of random, truncated, oversized and replayed frames go to a live
//! node of a 3-node cluster — without a handshake, and after a valid one —
//! while a client keeps writing through that node. Afterwards the node still
//! serves, every acknowledged write is there exactly once, and the replicas
//! are equal.
//!
//! The test speaks the transport's protocol itself: a frame is a 4-byte
//! big-endian length and an rmp-serde (named fields) encoding of the frame
//! enum; the handshake proves knowledge of the cluster secret with
//! HMAC-SHA256 (see `catga/src/transport/{frame,auth}.rs`); frames are
//! built by hand from that documented format, so that malformed ones (a
//! proof of the wrong length) can be sent too. RPC bodies use catga's real
//! `Rpc` and `Redirect` types (`catga::__private::wire`), so what decodes
//! here decodes on the node.
//!
//! Raft trusts authenticated peers: a peer that knows the secret may
//! legitimately start an election, append entries as a leader or add and
//! remove members. Random bodies that happen to decode as such messages are
//! therefore replaced by noise (see [`harmless`]); an election with a higher
//! term is sent on purpose, and the cluster must recover from it.
//!
//! The random choices come from a seed printed at the start; set
//! `WIRE_ABUSE_SEED` to replay a run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use catga::__private::wire::{
    Applied, EntryKind, Envelope, Frame, Ident, Redirect, Rpc, TC, decode_frame, decode_stream,
};
use catga::{Consistency, Role};
use catga_tests::harness::{Cluster, T};
use catga_tests::*;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use openraft::alias::{LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{EntryPayload, RaftTypeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"test-secret";
/// The node id the attacker claims in its handshakes (not a member).
const ATTACKER: u64 = 77;
/// The handshake's frame limit.
const HANDSHAKE_MAX_FRAME: usize = 1024;
/// The node's frame limit (the builder's default).
const MAX_FRAME: usize = 64 * 1024 * 1024;

const UNAUTHENTICATED_CONNECTIONS: usize = 1200;
const BAD_AUTHENTICATED_CONNECTIONS: usize = 200;
const REQUEST_CONNECTIONS: usize = 3;
const REQUESTS_PER_CONNECTION: usize = 1000;
const CONCURRENT_CONNECTIONS: usize = 32;

// ---- the wire format, mirrored

/// catga's frame enum as encoded (`catga/src/transport/frame.rs`).
#[derive(Serialize)]
enum Wire {
    Hello {
        node: u64,
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    Challenge {
        node: u64,
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    Proof {
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    Welcome,
    Request {
        id: u64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    Response {
        id: u64,
        result: WireResult,
    },
}

#[derive(Serialize)]
enum WireResult {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The frame's payload (no length prefix).
fn payload(w: &Wire) -> Vec<u8> {
    rmp_serde::to_vec_named(w).expect("a frame encodes")
}

/// The frame with its length prefix.
fn frame(w: &Wire) -> Vec<u8> {
    prefixed(&payload(w))
}

fn prefixed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

type Vote = VoteOf<TC>;
type LogId = LogIdOf<TC>;
type Entry = <TC as RaftTypeConfig>::Entry;

fn body(rpc: &Rpc) -> Vec<u8> {
    rmp_serde::to_vec(rpc).expect("an rpc encodes")
}

// ---- the handshake

type HmacSha256 = Hmac<Sha256>;

/// The handshake proof; this test announces no identity of its own, the
/// server's (when it sends one) is covered too.
fn proof(
    role: &[u8],
    client: u64,
    server: u64,
    nc: &[u8],
    ns: &[u8],
    server_ident: Option<Ident>,
) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(SECRET).expect("any key length");
    m.update(b"catga transport v1");
    m.update(role);
    m.update(&client.to_be_bytes());
    m.update(&server.to_be_bytes());
    m.update(nc);
    m.update(ns);
    if let Some(id) = server_ident {
        m.update(b"server ident");
        m.update(&id.cluster.to_be_bytes());
        m.update(&id.incarnation.to_be_bytes());
    }
    m.finalize().into_bytes().to_vec()
}

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.ok()?;
    decode_frame(Bytes::from(payload)).ok()
}

/// Connects to `addr` (node `server`) and passes the handshake as
/// [`ATTACKER`]; returns the stream and every byte sent on it.
async fn authenticate(addr: &str, server: u64, nc: [u8; 32]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let hello = frame(&Wire::Hello {
        node: ATTACKER,
        nonce: nc.to_vec(),
    });
    s.write_all(&hello).await.expect("send hello");
    let Some(Frame::Challenge {
        node_id,
        nonce: ns,
        proof: theirs,
        ident,
    }) = read_frame(&mut s).await
    else {
        panic!("expected a challenge");
    };
    assert_eq!(node_id, server);
    assert_eq!(
        theirs.to_vec(),
        proof(b"server", ATTACKER, server, &nc, &ns, ident),
        "the server's proof (checks this test's HMAC)"
    );
    let ours = frame(&Wire::Proof {
        proof: proof(b"client", ATTACKER, server, &nc, &ns, ident),
    });
    s.write_all(&ours).await.expect("send proof");
    assert_eq!(read_frame(&mut s).await, Some(Frame::Welcome));
    (s, [hello, ours].concat())
}

/// Sends `bodies` as pipelined requests (ids 0..) on an authenticated
/// stream while reading the responses; returns them by id. Every request
/// must be answered.
async fn pipeline(s: TcpStream, bodies: Vec<Vec<u8>>) -> BTreeMap<u64, Result<Bytes, String>> {
    let n = bodies.len();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for (id, body) in bodies.into_iter().enumerate() {
            let f = frame(&Wire::Request {
                id: id as u64,
                body,
            });
            w.write_all(&f).await.expect("send a request");
        }
        w
    });
    let mut answers = BTreeMap::new();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while answers.len() < n {
            let got = r.read(&mut chunk).await.expect("read responses");
            assert!(
                got > 0,
                "the node closed a connection with requests pending"
            );
            buf.extend_from_slice(&chunk[..got]);
            let mut used = 0;
            while buf.len() - used >= 4 {
                let len = u32::from_be_bytes(buf[used..used + 4].try_into().unwrap()) as usize;
                if buf.len() - used - 4 < len {
                    break;
                }
                let f = decode_frame(Bytes::copy_from_slice(&buf[used + 4..used + 4 + len]))
                    .expect("the node sends well-formed frames");
                let Frame::Response { id, result } = f else {
                    panic!("expected a response, got {f:?}");
                };
                assert!(
                    answers.insert(id, result).is_none(),
                    "two responses for request {id}"
                );
                used += 4 + len;
            }
            buf.drain(..used);
        }
    };
    tokio::time::timeout(T, read)
        .await
        .expect("every request is answered in time");
    let _w = writer.await.expect("writer");
    answers
}

/// Reads until the node closes the connection; returns what it sent.
async fn until_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(T, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node did not close a bad connection");
    got
}

// ---- random input

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Noise that looks like msgpack: headers of maps, arrays, strings and
/// binaries with lengths that may lie, and fragments of real names.
fn msgpack_noise(rng: &mut StdRng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        &[0x81],
        &[0x82],
        &[0x91],
        &[0x97],
        &[0xdc, 0xff, 0xff],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xdf, 0x7f, 0xff, 0xff, 0xff],
        &[0xc4, 0x20],
        &[0xc6, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0x00, 0x10, 0x00, 0x00],
        &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xc0],
        &[0xc3],
        b"\xa5Write",
        b"\xa4Vote",
        b"\xa6Append",
        b"\xa8Snapshot",
        b"\xa9ReadIndex",
        b"\xa7Request",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..24) {
        if rng.random_bool(0.8) {
            out.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        } else {
            out.push(rng.random());
        }
    }
    out
}

/// Flips, cuts or splices a few bytes.
fn mutate(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..5) {
        match rng.random_range(0..4) {
            0 | 1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= rng.random_range(1..=255u8);
            }
            2 => {
                let cut = rng.random_range(0..=b.len());
                b.truncate(cut);
            }
            _ => {
                let at = rng.random_range(0..=b.len());
                let junk = random_bytes(rng, 8);
                b.splice(at..at, junk);
            }
        }
    }
    b
}

fn stale_vote() -> Vote {
    Vote::new(0, 1)
}

fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}

/// A valid RPC body that must do no harm: stale votes, reads, and writes
/// of messages that change no counted state.
fn benign_rpc(rng: &mut StdRng) -> Vec<u8> {
    let env = |rng: &mut StdRng, name: &str, kind: EntryKind| Envelope {
        kind,
        name: name.into(),
        payload: random_bytes(rng, 32),
        client: rng.random(),
        seq: rng.random_range(0..4),
        ack_below: 0,
        time_ms: now_ms(),
        key: None,
    };
    match rng.random_range(0..8) {
        0 => body(&Rpc::Append(AppendEntriesRequest {
            vote: stale_vote(),
            prev_log_id: None,
            entries: vec![Entry {
                log_id: log_id(0, 1, 1),
                payload: EntryPayload::Blank,
            }],
            leader_commit: Some(log_id(0, 1, 1)),
        })),
        1 => body(&Rpc::Vote(VoteRequest::new(
            stale_vote(),
            Some(log_id(0, 1, rng.random())),
        ))),
        2 => body(&Rpc::Snapshot {
            vote: stale_vote(),
            meta: SnapshotMetaOf::<TC> {
                last_log_id: Some(log_id(0, 1, 5)),
                last_membership: Default::default(),
            },
            data: random_bytes(rng, 64),
        }),
        3 => body(&Rpc::ReadIndex),
        4 => body(&Rpc::Write(env(
            rng,
            "wire.NoSuchCommand",
            EntryKind::Command,
        ))),
        5 => body(&Rpc::Write(env(rng, "tests.Explode", EntryKind::Command))),
        6 => body(&Rpc::WriteMany(vec![
            env(rng, "wire.NoSuchCommand", EntryKind::Command),
            env(rng, "tests.OrderPlaced", EntryKind::Event),
        ])),
        _ => body(&Rpc::Write(env(rng, "tests.OrderPlaced", EntryKind::Event))),
    }
}

/// Whether a request body, if the node decodes it, is one that an honest
/// peer may never send or that this test must not send at random (see the
/// module docs): an election, an append or a snapshot that is not stale, a
/// membership change, a write that touches the counted stock, or a write
/// stamped in the future (the dedup table expires clients by log time).
fn harmless(body: &[u8]) -> bool {
    let stale = |v: &Vote| v.leader_id.term == 0;
    match rmp_serde::from_slice::<Rpc>(body) {
        Err(_) => true,
        Ok(Rpc::Append(r)) => stale(&r.vote),
        Ok(Rpc::AppendPipe { req, .. }) => stale(&req.vote),
        Ok(Rpc::Vote(r)) => stale(&r.vote),
        Ok(Rpc::Snapshot { vote, .. } | Rpc::SnapshotDone { vote, .. }) => stale(&vote),
        // a chunk only goes to the receiving file; nothing installs it
        // without a `SnapshotDone` of a current vote
        Ok(Rpc::SnapshotChunk { .. }) => true,
        Ok(Rpc::ReadIndex | Rpc::Capabilities) => true,
        Ok(Rpc::AddNode { .. } | Rpc::RemoveNode { .. }) => false,
        // a pre-vote changes nothing on the node, whatever it asks
        Ok(Rpc::PreVote(_)) => true,
        Ok(Rpc::Write(env)) => harmless_write(&env),
        Ok(Rpc::WriteMany(envs)) => envs.iter().all(harmless_write),
        // a question changes nothing; a promise only binds a node that
        // stops before a poison pill, and a quarantine needs every promise
        Ok(Rpc::PoisonReport { promise, .. }) => !promise,
        Ok(Rpc::Quarantine { .. }) => false,
    }
}

fn harmless_write(env: &Envelope) -> bool {
    !env.name.starts_with("tests.Restock")
        && !env.name.starts_with("tests.PlaceOrder")
        && env.time_ms <= now_ms() + 60_000
}

/// A random request body: noise, mutated valid RPCs, valid harmless RPCs,
/// and now and then a large one.
fn random_body(rng: &mut StdRng) -> Vec<u8> {
    let b = match rng.random_range(0..100) {
        0..25 => random_bytes(rng, 256),
        25..50 => msgpack_noise(rng),
        50..85 => {
            let valid = benign_rpc(rng);
            mutate(rng, valid)
        }
        85..99 => benign_rpc(rng),
        _ => random_bytes(rng, 1 << 20),
    };
    if harmless(&b) {
        b
    } else {
        random_bytes(rng, 64)
    }
}

/// What an unauthenticated connection sends (then it closes its side).
fn unauthenticated_input(rng: &mut StdRng, replay: &[u8]) -> Vec<u8> {
    let hello = || {
        frame(&Wire::Hello {
            node: ATTACKER,
            nonce: vec![7; 32],
        })
    };
    match rng.random_range(0..9) {
        0 => random_bytes(rng, 600),
        1 => {
            let n = rng.random_range(0..=HANDSHAKE_MAX_FRAME);
            let mut p = vec![0u8; n];
            rng.fill(&mut p[..]);
            prefixed(&p)
        }
        2 => prefixed(&msgpack_noise(rng)),
        3 => {
            // oversized: the length alone is refused
            let len = rng.random_range(HANDSHAKE_MAX_FRAME as u32 + 1..=u32::MAX);
            let mut v = len.to_be_bytes().to_vec();
            v.extend(random_bytes(rng, 2048));
            v
        }
        4 => {
            // a truncated hello
            let h = hello();
            let cut = rng.random_range(0..h.len());
            h[..cut].to_vec()
        }
        5 => {
            // a hello, then a proof made up
            let mut v = hello();
            v.extend(frame(&Wire::Proof {
                proof: random_bytes(rng, 40),
            }));
            v.extend(frame(&Wire::Request {
                id: 1,
                body: body(&Rpc::ReadIndex),
            }));
            v
        }
        6 => {
            // a request, a response or a welcome without any handshake
            let w = match rng.random_range(0..3) {
                0 => Wire::Request {
                    id: rng.random(),
                    body: benign_rpc(rng),
                },
                1 => Wire::Response {
                    id: rng.random(),
                    result: WireResult::Ok(random_bytes(rng, 16)),
                },
                _ => Wire::Welcome,
            };
            frame(&w)
        }
        7 => {
            // a hello, then mutated handshake frames
            let mut v = hello();
            let challenge = payload(&Wire::Challenge {
                node: 1,
                nonce: vec![1; 32],
                proof: vec![2; 32],
            });
            v.extend(prefixed(&mutate(rng, challenge)));
            v
        }
        _ => {
            // a recorded genuine session, replayed (a fresh server nonce
            // makes the recorded proof worthless), possibly cut short
            let cut = if rng.random_bool(0.5) {
                replay.len()
            } else {
                rng.random_range(0..=replay.len())
            };
            replay[..cut].to_vec()
        }
    }
}

/// What an authenticated connection sends after the handshake to get itself
/// closed: oversized, malformed, truncated or out-of-place frames.
fn bad_authenticated_input(rng: &mut StdRng) -> Vec<u8> {
    // a few good requests first, so bad frames arrive mid-stream
    let mut v = Vec::new();
    for id in 0..rng.random_range(0..3) {
        v.extend(frame(&Wire::Request {
            id,
            body: random_body(rng),
        }));
    }
    match rng.random_range(0..6) {
        0 => {
            let len = rng.random_range(MAX_FRAME as u32 + 1..=u32::MAX);
            v.extend(len.to_be_bytes());
            v.extend(random_bytes(rng, 4096));
        }
        1 => v.extend(prefixed(&random_bytes(rng, 512))),
        2 => v.extend(prefixed(&msgpack_noise(rng))),
        3 => {
            let f = frame(&Wire::Request {
                id: 9,
                body: random_body(rng),
            });
            let cut = rng.random_range(1..f.len());
            v.extend_from_slice(&f[..cut]);
        }
        4 => v.extend(frame(&match rng.random_range(0..4) {
            0 => Wire::Hello {
                node: 1,
                nonce: vec![0; 32],
            },
            1 => Wire::Proof { proof: vec![0; 32] },
            2 => Wire::Welcome,
            _ => Wire::Response {
                id: 3,
                result: WireResult::Ok(vec![]),
            },
        })),
        _ => {
            let f = payload(&Wire::Request {
                id: 4,
                body: benign_rpc(rng),
            });
            v.extend(prefixed(&mutate(rng, f)));
        }
    }
    v
}

// ---- the test

fn restock_env(sku: &str, qty: u32, client: u64, seq: u64) -> Envelope {
    Envelope {
        kind: EntryKind::Command,
        name: "tests.Restock".into(),
        payload: rmp_serde::to_vec_named(&Restock {
            sku: sku.into(),
            qty,
        })
        .unwrap(),
        client,
        seq,
        ack_below: seq,
        time_ms: now_ms(),
        key: None,
    }
}

/// The stock level a `Restock` answered with, from a forwarded-write reply;
/// or why there is none (not the leader, outcome unknown).
fn restocked(reply: &Result<Bytes, String>) -> Result<u32, String> {
    let bytes = reply.as_ref().map_err(|e| format!("error reply: {e}"))?;
    match rmp_serde::from_slice::<Redirect<Applied>>(bytes).expect("a redirect") {
        Redirect::Ok(applied) => {
            let out = applied.response.expect("restock succeeds");
            Ok(rmp_serde::from_slice(&out).expect("a u32"))
        }
        Redirect::NotLeader(l) => Err(format!("not the leader (leader: {l:?})")),
        Redirect::Unknown(e) => Err(format!("outcome unknown: {e}")),
        Redirect::Failed(e) => panic!("a forwarded write failed: {e}"),
        Redirect::NotUpgraded { name, nodes } => {
            panic!("a forwarded write was refused: {name} unknown to {nodes:?}")
        }
    }
}

/// Sends a write of `env` to the current leader until one attempt answers;
/// returns the stock level it reported.
async fn write_to_leader(c: &Cluster, env: &Envelope, nonce: [u8; 32]) -> u32 {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let leader = c.leader().await;
        let (s, _) = authenticate(&c.addrs[leader as usize - 1], leader, nonce).await;
        let answers = pipeline(s, vec![body(&Rpc::Write(env.clone()))]).await;
        match restocked(&answers[&0]) {
            Ok(n) => return n,
            Err(why) => assert!(
                tokio::time::Instant::now() < deadline,
                "no leader took the write: {why}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_wire_never_hurts_a_node() {
    let seed: u64 = std::env::var("WIRE_ABUSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("wire_abuse: seed {seed} (set WIRE_ABUSE_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();

    let c = Cluster::start(3).await;
    let target = c.leader().await;
    let addr = c.addrs[target as usize - 1].clone();

    // A client writes through the node under attack the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (node, stop, acked, unknown) = (
                c.node(target).clone(),
                stop.clone(),
                acked.clone(),
                unknown.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = node
                        .send(Restock {
                            sku: "acked".into(),
                            qty: 1,
                        })
                        .await;
                    match r {
                        Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                        Err(catga::Error::Timeout { .. }) => unknown.fetch_add(1, Ordering::SeqCst),
                        Err(e) => panic!("a write through the attacked node failed: {e}"),
                    };
                }
            })
        })
        .collect();

    // A genuine session, recorded: its replays must be refused.
    let session = restock_env("replayed-session", 3, rng.random::<u64>() | 1 << 63, 1);
    let (s, mut recorded) = authenticate(&addr, target, rng.random()).await;
    let request = frame(&Wire::Request {
        id: 0,
        body: body(&Rpc::Write(session.clone())),
    });
    recorded.extend_from_slice(&request);
    let answers = pipeline(s, vec![body(&Rpc::Write(session.clone()))]).await;
    let session_applied = restocked(&answers[&0]).is_ok();

    // 1. Without a handshake.
    let unauthenticated = {
        let inputs: Vec<Vec<u8>> = (0..UNAUTHENTICATED_CONNECTIONS)
            .map(|_| unauthenticated_input(&mut rng, &recorded))
            .collect();
        let addr = addr.clone();
        async move {
            futures::stream::iter(inputs)
                .map(|input| {
                    let addr = addr.clone();
                    async move {
                        let mut s = TcpStream::connect(&addr).await.expect("connect");
                        // the node may close first: that is fine
                        let _ = s.write_all(&input).await;
                        let _ = s.shutdown().await;
                        let got = until_closed(s).await;
                        for f in decode_stream(&got, HANDSHAKE_MAX_FRAME)
                            .into_iter()
                            .flatten()
                        {
                            assert!(
                                matches!(f, Frame::Challenge { .. }),
                                "an unauthenticated peer got {f:?}"
                            );
                        }
                        input.len()
                    }
                })
                .buffer_unordered(CONCURRENT_CONNECTIONS)
                .fold(0usize, |a, b| async move { a + b })
                .await
        }
    };

    // 2. After a handshake: frames that must get the connection closed.
    let bad_authenticated = {
        let inputs: Vec<(Vec<u8>, [u8; 32])> = (0..BAD_AUTHENTICATED_CONNECTIONS)
            .map(|_| (bad_authenticated_input(&mut rng), rng.random()))
            .collect();
        let addr = addr.clone();
        async move {
            futures::stream::iter(inputs)
                .map(|(input, nonce)| {
                    let addr = addr.clone();
                    async move {
                        let (mut s, _) = authenticate(&addr, target, nonce).await;
                        let _ = s.write_all(&input).await;
                        let _ = s.shutdown().await;
                        until_closed(s).await;
                    }
                })
                .buffer_unordered(CONCURRENT_CONNECTIONS)
                .collect::<Vec<()>>()
                .await
        }
    };

    // 3. After a handshake: thousands of requests with random bodies, each
    // answered (mostly with "bad request"), on connections that stay open.
    let requests = {
        let conns: Vec<(Vec<Vec<u8>>, [u8; 32])> = (0..REQUEST_CONNECTIONS)
            .map(|_| {
                let bodies = (0..REQUESTS_PER_CONNECTION)
                    .map(|_| random_body(&mut rng))
                    .collect();
                (bodies, rng.random())
            })
            .collect();
        let addr = addr.clone();
        async move {
            let answers = futures::future::join_all(conns.into_iter().map(|(bodies, nonce)| {
                let addr = addr.clone();
                async move {
                    let (s, _) = authenticate(&addr, target, nonce).await;
                    pipeline(s, bodies).await
                }
            }))
            .await;
            let refused = answers
                .iter()
                .flat_map(|a| a.values())
                .filter(|r| matches!(r, Err(e) if e.starts_with("bad request")))
                .count();
            (answers.len() * REQUESTS_PER_CONNECTION, refused)
        }
    };

    let (unauth_bytes, bad, (answered, refused)) =
        tokio::join!(unauthenticated, bad_authenticated, requests);
    assert_eq!(bad.len(), BAD_AUTHENTICATED_CONNECTIONS);
    eprintln!(
        "wire_abuse: {UNAUTHENTICATED_CONNECTIONS} unauthenticated connections ({unauth_bytes} bytes), \
         {BAD_AUTHENTICATED_CONNECTIONS} authenticated ones closed for bad frames, \
         {answered} random requests answered ({refused} refused as bad requests) after {:?}",
        started.elapsed()
    );
    assert!(refused > answered / 3, "most random bodies are refused");

    // 4. Replayed valid writes: applied once, every copy answered alike.
    let replayed = restock_env("replayed", 5, rng.random::<u64>() | 1 << 63, 1);
    assert_eq!(write_to_leader(&c, &replayed, rng.random()).await, 5);
    let leader = c.leader().await;
    let (s, _) = authenticate(&c.addrs[leader as usize - 1], leader, rng.random()).await;
    let copies = pipeline(s, vec![body(&Rpc::Write(replayed.clone())); 200]).await;
    for reply in copies.values() {
        if let Ok(n) = restocked(reply) {
            assert_eq!(n, 5, "a replayed write was applied again");
        }
    }

    // 5. An election with a much higher term (a peer may start one): the
    // cluster must get over it.
    let term = c.node(leader).health().term;
    let vote = VoteRequest {
        vote: Vote::new(term + 100, ATTACKER),
        last_log_id: Some(log_id(term + 100, ATTACKER, u64::MAX / 2)),
        leadership_transfer: true,
    };
    let (s, _) = authenticate(&c.addrs[leader as usize - 1], leader, rng.random()).await;
    let answers = pipeline(s, vec![body(&Rpc::Vote(vote)); 3]).await;
    assert!(answers.values().all(Result::is_ok), "{answers:?}");

    // The same write again, through whichever node leads now: still once.
    assert_eq!(write_to_leader(&c, &replayed, rng.random()).await, 5);

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("the writing client");
    }
    let (acked, unknown) = (acked.load(Ordering::SeqCst), unknown.load(Ordering::SeqCst));

    // The attacked node still serves, and nothing acknowledged was lost or
    // applied twice.
    assert_eq!(
        c.node(target)
            .send(Restock {
                sku: "after".into(),
                qty: 1
            })
            .await
            .expect("the attacked node serves writes"),
        1
    );
    let node = c.node(target).clone();
    let stock = |sku: &'static str| {
        let node = node.clone();
        async move {
            node.query(GetStock { sku: sku.into() }, Consistency::Linearizable)
                .await
                .expect("a linearizable read")
                .unwrap_or(0) as u64
        }
    };
    let counted = stock("acked").await;
    assert!(
        acked <= counted && counted <= acked + unknown,
        "acknowledged {acked} (outcome unknown: {unknown}) but the stock is {counted}"
    );
    assert!(acked > 0, "the client got writes through during the attack");
    assert_eq!(stock("replayed").await, 5);
    let session_stock = stock("replayed-session").await;
    assert!(
        session_stock == 3 || (!session_applied && session_stock == 0),
        "a replayed session was applied: stock {session_stock}"
    );
    c.assert_replicas_equal().await;
    let leader = c.leader().await;
    for n in c.up() {
        let h = n.health();
        assert!(h.ready, "node {} is not ready: {h:?}", h.node_id);
        assert_eq!(h.leader, Some(leader));
        assert_ne!(h.role, Role::Shutdown);
        assert_eq!(h.members, vec![1, 2, 3]);
    }
    eprintln!(
        "wire_abuse: {acked} writes acknowledged during the attack ({unknown} unknown), \
         term {} -> {}, done in {:?}",
        term,
        c.node(leader).health().term,
        started.elapsed()
    );
    c.shutdown().await;
}

async fn send_one(c: &Cluster, node: u64, body: Vec<u8>) -> Result<Bytes, String> {
    let (s, _) = authenticate(&c.addrs[node as usize - 1], node, rand::random()).await;
    let mut answers = tokio::time::timeout(T, pipeline(s, vec![body]))
        .await
        .expect("answered in time");
    answers.remove(&0).expect("one answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_with_an_absurd_term_is_refused() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    let vote = VoteRequest {
        vote: Vote::new(u64::MAX, ATTACKER),
        last_log_id: Some(LogId::new(
            LeaderId {
                term: u64::MAX,
                node_id: ATTACKER,
            },
            u64::MAX,
        )),
        leadership_transfer: true,
    };
    let r = send_one(&c, f, body(&Rpc::Vote(vote))).await;
    assert!(matches!(&r, Err(e) if e.contains("absurd term")), "{r:?}");
    assert!(c.node(f).health().term < 1000, "the term was not adopted");
    c.node(l)
        .send(Restock {
            sku: "term".into(),
            qty: 1,
        })
        .await
        .expect("the cluster still writes");
    c.assert_replicas_equal().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_restored_is_refused_and_the_node_stays_up() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    c.node(l)
        .send(Restock {
            sku: "snapx".into(),
            qty: 1,
        })
        .await
        .expect("write");
    let term = c.node(f).health().term;
    let rpc = Rpc::Snapshot {
        vote: Vote::new_committed(term + 1, l),
        meta: SnapshotMetaOf::<TC> {
            last_log_id: Some(LogId::new(
                LeaderId {
                    term: term + 1,
                    node_id: l,
                },
                1000,
            )),
            last_membership: Default::default(),
        },
        data: b"garbage".to_vec(),
    };
    let r = send_one(&c, f, body(&rpc)).await;
    let reply: Result<(), String> = match r {
        Ok(bytes) => rmp_serde::from_slice::<Result<serde::de::IgnoredAny, String>>(&bytes)
            .expect("a reply")
            .map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(&reply, Err(e) if e.contains("snapshot refused")),
        "{reply:?}"
    );
    assert_ne!(c.node(f).health().role, Role::Shutdown);
    c.node(f)
        .send(Restock {
            sku: "snapx".into(),
            qty: 1,
        })
        .await
        .expect("the follower still serves");
    c.assert_replicas_equal().await;
    c.shutdown().await;
}

/// The mediator's requests (issue 13), as the node decodes them: a tag
/// byte, then an rmp-encoded enum with named fields.
#[derive(serde::Serialize)]
#[serde(crate = "serde")]
enum MediatorRequest {
    Query {
        name: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        linearizable: bool,
    },
    Event {
        name: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
}

fn mediator_body(req: &MediatorRequest) -> Vec<u8> {
    let mut b = vec![0xc1];
    b.extend(rmp_serde::to_vec_named(req).unwrap());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mediator_requests_are_answered_with_errors_and_the_node_keeps_serving() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let c = Cluster::start(3).await;
    c.leader().await;
    c.node(1)
        .send(Restock {
            sku: "m".into(),
            qty: 2,
        })
        .await
        .unwrap();
    c.assert_replicas_equal().await;
    let mut bodies: Vec<Vec<u8>> = vec![
        vec![0xc1],
        vec![0xc1, 0xc1, 0xc1],
        mediator_body(&MediatorRequest::Query {
            name: "no.such.Query".into(),
            payload: vec![0x80],
            linearizable: false,
        }),
        mediator_body(&MediatorRequest::Query {
            name: "tests.GetStock".into(),
            payload: vec![0xde, 0xad],
            linearizable: true,
        }),
        mediator_body(&MediatorRequest::Query {
            name: "tests.GetStock".into(),
            // nested 10,000 deep
            payload: vec![0x91; 10_000],
            linearizable: false,
        }),
        mediator_body(&MediatorRequest::Event {
            name: "tests.Restock".into(),
            payload: vec![],
        }),
        mediator_body(&MediatorRequest::Event {
            name: "tests.OrderPlaced".into(),
            payload: vec![0xff; 64],
        }),
    ];
    for _ in 0..300 {
        let mut b = vec![0xc1];
        b.extend(if rng.random_bool(0.5) {
            random_bytes(&mut rng, 512)
        } else {
            msgpack_noise(&mut rng)
        });
        bodies.push(b);
    }
    let n = bodies.len();
    let (s, _) = authenticate(&c.addrs[1], 2, rand::random()).await;
    let answers = pipeline(s, bodies).await;
    assert_eq!(
        answers.len(),
        n,
        "every request answered, none closed the connection"
    );
    // the node still serves its mediator and Raft
    assert_eq!(
        c.node(1)
            .send_to(2, GetStock { sku: "m".into() })
            .await
            .unwrap(),
        Some(2)
    );
    c.node(2)
        .send(Restock {
            sku: "m".into(),
            qty: 1,
        })
        .await
        .unwrap();
    c.assert_replicas_equal().await;
    c.shutdown().await;
}
