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
//! HMAC-SHA256 (see `catga/src/transport/{frame,auth}.rs`). RPC bodies are
//! encoded with mirrors of catga's private `Rpc` and `Redirect` enums over
//! openraft's own types, so what decodes here decodes on the node.
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
use catga::transport::{Frame, decode_frame, decode_stream};
use catga::{Applied, Consistency, EntryKind, Envelope, Role};
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
use serde::{Deserialize, Serialize};
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

openraft::declare_raft_types!(
    /// The same type configuration as catga's (`catga/src/raft/mod.rs`).
    TC:
        D = Envelope,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
);

type Vote = VoteOf<TC>;
type LogId = LogIdOf<TC>;
type Entry = <TC as RaftTypeConfig>::Entry;

/// catga's RPC body (`catga/src/raft/mod.rs`), encoded with `rmp_serde::to_vec`.
#[derive(Serialize, Deserialize)]
enum Rpc {
    Append(AppendEntriesRequest<TC>),
    Vote(VoteRequest<TC>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMetaOf<TC>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Write(Envelope),
    ReadIndex,
    AddNode {
        id: u64,
        addr: String,
    },
    RemoveNode {
        id: u64,
    },
}

/// catga's answer to a forwarded write.
#[derive(Deserialize, Debug)]
enum Redirect<T> {
    Ok(T),
    NotLeader(Option<u64>),
    Unknown(String),
    Failed(String),
}

fn body(rpc: &Rpc) -> Vec<u8> {
    rmp_serde::to_vec(rpc).expect("an rpc encodes")
}

// ---- the handshake

type HmacSha256 = Hmac<Sha256>;

fn proof(role: &[u8], client: u64, server: u64, nc: &[u8], ns: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(SECRET).expect("any key length");
    m.update(b"catga transport v1");
    m.update(role);
    m.update(&client.to_be_bytes());
    m.update(&server.to_be_bytes());
    m.update(nc);
    m.update(ns);
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
    }) = read_frame(&mut s).await
    else {
        panic!("expected a challenge");
    };
    assert_eq!(node_id, server);
    assert_eq!(
        theirs.to_vec(),
        proof(b"server", ATTACKER, server, &nc, &ns),
        "the server's proof (checks this test's HMAC)"
    );
    let ours = frame(&Wire::Proof {
        proof: proof(b"client", ATTACKER, server, &nc, &ns),
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
    };
    match rng.random_range(0..7) {
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
        Ok(Rpc::Vote(r)) => stale(&r.vote),
        Ok(Rpc::Snapshot { vote, .. }) => stale(&vote),
        Ok(Rpc::ReadIndex) => true,
        Ok(Rpc::AddNode { .. } | Rpc::RemoveNode { .. }) => false,
        Ok(Rpc::Write(env)) => {
            !env.name.starts_with("tests.Restock")
                && !env.name.starts_with("tests.PlaceOrder")
                && env.time_ms <= now_ms() + 60_000
        }
    }
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

async fn send_one(c: &Cluster, node: u64, body: Vec<u8>) -> Result<Bytes, String> {
    let (s, _) = authenticate(&c.addrs[node as usize - 1], node, rand::random()).await;
    let mut a = tokio::time::timeout(std::time::Duration::from_secs(5), pipeline(s, vec![body]))
        .await
        .expect("answered");
    a.remove(&0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_deep() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let mut b = vec![0x81, 0xa5];
    b.extend_from_slice(b"Write");
    b.extend_from_slice(&[0x81, 0xa4]);
    b.extend_from_slice(b"junk");
    b.extend(std::iter::repeat_n(0x91u8, 1000));
    b.push(0xc0);
    eprintln!("PROBE sending {} bytes", b.len());
    let r = send_one(&c, l, b).await;
    eprintln!("PROBE survived: {r:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_max_term() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    let vote = VoteRequest {
        vote: Vote::new(u64::MAX, ATTACKER),
        last_log_id: Some(log_id(u64::MAX, ATTACKER, u64::MAX)),
        leadership_transfer: true,
    };
    let r = send_one(&c, f, body(&Rpc::Vote(vote))).await;
    eprintln!("PROBE vote reply: {:?}", r.as_ref().map(|b| b.len()));
    // wait for things to happen
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        c.node(f)
            .health_changed(std::time::Duration::from_millis(500))
            .await;
    }
    for n in c.up() {
        eprintln!("PROBE health {:?}", n.health());
    }
    let w = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        c.node(l).send(Restock {
            sku: "x".into(),
            qty: 1,
        }),
    )
    .await;
    eprintln!("PROBE write after: {w:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_snapshot() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    c.node(l)
        .send(Restock {
            sku: "x".into(),
            qty: 1,
        })
        .await
        .unwrap();
    let term = c.node(f).health().term;
    let rpc = Rpc::Snapshot {
        vote: Vote::new_committed(term + 1, l),
        meta: SnapshotMetaOf::<TC> {
            last_log_id: Some(log_id(term + 1, l, 1000)),
            last_membership: Default::default(),
        },
        data: b"garbage".to_vec(),
    };
    let r = send_one(&c, f, body(&rpc)).await;
    eprintln!("PROBE snapshot reply: {r:?}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        c.node(f)
            .health_changed(std::time::Duration::from_millis(500))
            .await;
    }
    for n in c.up() {
        eprintln!("PROBE health {:?}", n.health());
    }
    let w = tokio::time::timeout(
        std::time::Duration::from_secs(8),
        c.node(f).send(Restock {
            sku: "x".into(),
            qty: 1,
        }),
    )
    .await;
    eprintln!("PROBE write via follower after: {w:?}");
    let mut c = c;
    c.kill(f).await;
    let r = c.restart(f).await;
    eprintln!("PROBE restart: {r:?}");
    if r.is_ok() {
        let w = tokio::time::timeout(std::time::Duration::from_secs(8), c.node(f).send(Restock { sku: "x".into(), qty: 1 })).await;
        eprintln!("PROBE write via restarted follower: {w:?}");
        c.assert_replicas_equal().await;
        eprintln!("PROBE replicas equal");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn probe_future_time() {
    let mut app = catga::testing::TestApp::new().unwrap();
    let env = restock_env("dup", 1, 1, 1);
    let a = app.apply(env.clone()).await;
    eprintln!("PROBE first {:?}", a.response);
    let mut other = restock_env("other", 1, 2, 1);
    other.time_ms += 2 * 3600 * 1000;
    app.apply(other).await;
    let b = app.apply(env.clone()).await; // a retry of the same (client, seq)
    eprintln!("PROBE retry {:?}", b.response);
    eprintln!(
        "PROBE stock {:?}",
        app.state::<Shop>().unwrap().stock.get("dup")
    );
}
