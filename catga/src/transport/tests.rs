//! Transport tests: real TCP on 127.0.0.1, ephemeral ports, no sleeps used as
//! synchronisation (timeouts below only bound how long a failing test hangs).
//!
//! Over 500 lines on purpose: the transport's whole specification as
//! tests (handshake, framing, multiplexing, limits, faults), sharing one
//! set of helpers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, join_all};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::frame::{self, Frame, decode_frame, decode_stream, encode_frame};
use super::*;

const SECRET: &[u8] = b"cluster secret";
const SERVER_ID: u64 = 2;
const CLIENT_ID: u64 = 1;
const LONG: Duration = Duration::from_secs(10);

fn config(node_id: u64, secret: &[u8]) -> Arc<TransportConfig> {
    Arc::new(TransportConfig {
        node_id,
        secret: secret.to_vec(),
        ..TransportConfig::default()
    })
}

/// Echoes `from` and the body, with a few magic bodies.
struct TestService {
    calls: AtomicUsize,
    /// One permit per call that is hanging.
    hanging: Semaphore,
}

impl Service for TestService {
    fn call(&self, from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &body[..] {
            b"hang" => {
                self.hanging.add_permits(1);
                Box::pin(futures::future::pending())
            }
            b"panic now" => panic!("boom (a test panic)"),
            b"panic later" => Box::pin(async { panic!("boom (a test panic)") }),
            b"fail" => Box::pin(async { Err("it failed".to_owned()) }),
            b"big" => Box::pin(async { Ok(Bytes::from(vec![7u8; 8192])) }),
            _ => {
                let mut out = from.to_be_bytes().to_vec();
                out.extend_from_slice(&body);
                Box::pin(async move { Ok(Bytes::from(out)) })
            }
        }
    }
}

impl Default for TestService {
    fn default() -> Self {
        TestService {
            calls: AtomicUsize::new(0),
            hanging: Semaphore::new(0),
        }
    }
}

impl TestService {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `n` calls are hanging.
    async fn wait_hanging(&self, n: u32) {
        let permits = tokio::time::timeout(LONG, self.hanging.acquire_many(n))
            .await
            .expect("calls did not arrive")
            .expect("semaphore closed");
        permits.forget();
    }
}

fn echo(from: u64, body: &[u8]) -> Bytes {
    let mut out = from.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    Bytes::from(out)
}

struct Fixture {
    server: Option<Server>,
    service: Arc<TestService>,
    server_faults: Faults,
    pool: Pool,
    client_faults: Faults,
    addr: String,
}

async fn start_server(cfg: Arc<TransportConfig>, faults: Faults) -> (Server, Arc<TestService>) {
    let service = Arc::new(TestService::default());
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, service.clone(), faults)
        .await
        .unwrap();
    (server, service)
}

async fn fixture_with(
    server_cfg: Arc<TransportConfig>,
    client_cfg: Arc<TransportConfig>,
) -> Fixture {
    let server_faults = Faults::default();
    let (server, service) = start_server(server_cfg, server_faults.clone()).await;
    let client_faults = Faults::default();
    let pool = Pool::new(client_cfg, client_faults.clone());
    let addr = server.local_addr().to_string();
    Fixture {
        server: Some(server),
        service,
        server_faults,
        pool,
        client_faults,
        addr,
    }
}

async fn fixture() -> Fixture {
    fixture_with(config(SERVER_ID, SECRET), config(CLIENT_ID, SECRET)).await
}

impl Fixture {
    async fn call(&self, body: &'static [u8]) -> Result<Bytes, TransportError> {
        self.pool
            .call(SERVER_ID, &self.addr, Bytes::from_static(body), LONG)
            .await
    }

    async fn assert_serves(&self) {
        assert_eq!(self.call(b"ping").await, Ok(echo(CLIENT_ID, b"ping")));
    }

    fn server_addr(&self) -> SocketAddr {
        self.addr.parse().unwrap()
    }

    async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    async fn stop(mut self) {
        self.pool.shutdown().await;
        self.stop_server().await;
    }
}

/// Reads until the peer closes the connection (EOF or reset).
async fn assert_closed(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(LONG, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not close the connection");
}

/// A raw connection that has passed the handshake as node `CLIENT_ID`.
async fn raw_authenticated(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    let authed = auth::client(
        tls::Stream::Plain(stream),
        &config(CLIENT_ID, SECRET),
        SERVER_ID,
    )
    .await
    .unwrap();
    assert!(authed.read_buf.is_empty());
    match authed.stream {
        tls::Stream::Plain(s) => s,
        _ => unreachable!("a plaintext handshake"),
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(f, usize::MAX, &mut buf).unwrap();
    buf.to_vec()
}

#[tokio::test]
async fn round_trip() {
    let f = fixture().await;
    f.assert_serves().await;
    assert_eq!(f.call(b"").await, Ok(echo(CLIENT_ID, b"")));
    assert_eq!(
        f.call(b"fail").await,
        Err(TransportError::Remote("it failed".into()))
    );
    assert_eq!(f.service.calls(), 3);
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_share_one_connection() {
    let server_cfg = Arc::new(TransportConfig {
        max_in_flight_per_conn: 16,
        ..(*config(SERVER_ID, SECRET)).clone()
    });
    let client_cfg = Arc::new(TransportConfig {
        write_buffer: 64,
        ..(*config(CLIENT_ID, SECRET)).clone()
    });
    let f = fixture_with(server_cfg, client_cfg).await;
    let calls = (0..1000u32).map(|i| {
        let (pool, addr) = (f.pool.clone(), f.addr.clone());
        async move {
            let body = Bytes::from(i.to_be_bytes().to_vec());
            let got = pool.call(SERVER_ID, &addr, body.clone(), LONG).await;
            assert_eq!(got, Ok(echo(CLIENT_ID, &body)));
        }
    });
    join_all(calls).await;
    assert_eq!(f.service.calls(), 1000);
    assert_eq!(f.pool.connects(), 1);
    assert_eq!(f.pool.in_flight(SERVER_ID), 0);
    f.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_refused_both_ways() {
    // The client has the wrong secret: the server's proof does not verify.
    let f = fixture_with(config(SERVER_ID, SECRET), config(CLIENT_ID, b"wrong")).await;
    assert!(matches!(
        f.call(b"ping").await,
        Err(TransportError::Handshake(_))
    ));
    assert_eq!(f.service.calls(), 0);
    assert_eq!(f.pool.connects(), 0);

    // A client that skips checking the server and sends a proof made with
    // the wrong secret is cut off by the server.
    let mut s = TcpStream::connect(f.server_addr()).await.unwrap();
    let nc = [1u8; 32];
    s.write_all(&encoded(&Frame::Hello {
        node_id: CLIENT_ID,
        nonce: nc,
        ident: None,
    }))
    .await
    .unwrap();
    let Frame::Challenge { nonce: ns, .. } = read_frame(&mut s).await else {
        panic!("expected a challenge")
    };
    let proof = auth::prove(
        b"wrong",
        auth::CLIENT,
        CLIENT_ID,
        SERVER_ID,
        &nc,
        &ns,
        (None, None),
    )
    .unwrap();
    s.write_all(&encoded(&Frame::Proof { proof }))
        .await
        .unwrap();
    s.write_all(&encoded(&Frame::Request {
        id: 1,
        body: Bytes::from_static(b"ping"),
    }))
    .await
    .unwrap();
    assert_closed(s).await;
    assert_eq!(f.service.calls(), 0);
    f.stop().await;

    // The server has the wrong secret.
    let f = fixture_with(config(SERVER_ID, b"wrong"), config(CLIENT_ID, SECRET)).await;
    assert!(matches!(
        f.call(b"ping").await,
        Err(TransportError::Handshake(_))
    ));
    assert_eq!(f.service.calls(), 0);
    f.stop().await;
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let f = fixture().await;
    let addr = f.server_addr();
    let nc = [3u8; 32];
    let hello = encoded(&Frame::Hello {
        node_id: CLIENT_ID,
        nonce: nc,
        ident: None,
    });

    // A genuine handshake, recorded.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let Frame::Challenge { nonce: ns, .. } = read_frame(&mut s).await else {
        panic!("expected a challenge")
    };
    let proof = auth::prove(
        SECRET,
        auth::CLIENT,
        CLIENT_ID,
        SERVER_ID,
        &nc,
        &ns,
        (None, None),
    )
    .unwrap();
    let recorded = encoded(&Frame::Proof { proof });
    s.write_all(&recorded).await.unwrap();
    assert_eq!(read_frame(&mut s).await, Frame::Welcome);
    drop(s);

    // The same Hello and Proof again: the server's nonce differs.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let Frame::Challenge { nonce: ns2, .. } = read_frame(&mut s).await else {
        panic!("expected a challenge")
    };
    assert_ne!(ns, ns2);
    s.write_all(&recorded).await.unwrap();
    assert_closed(s).await;
    f.assert_serves().await;
    f.stop().await;
}

#[tokio::test]
async fn the_wrong_node_at_an_address_is_refused() {
    let f = fixture().await;
    let got = f
        .pool
        .call(3, &f.addr, Bytes::from_static(b"x"), LONG)
        .await;
    assert!(
        matches!(got, Err(TransportError::Handshake(ref m)) if m.contains("node 2")),
        "{got:?}"
    );
    f.stop().await;
}

async fn read_frame(s: &mut TcpStream) -> Frame {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.unwrap();
    decode_frame(Bytes::from(payload)).unwrap()
}

#[tokio::test]
async fn bad_frames_close_the_connection_and_the_server_keeps_serving() {
    let server_cfg = Arc::new(TransportConfig {
        max_frame_bytes: 4096,
        handshake_timeout: Duration::from_secs(1),
        ..(*config(SERVER_ID, SECRET)).clone()
    });
    let f = fixture_with(server_cfg, config(CLIENT_ID, SECRET)).await;
    let addr = f.server_addr();
    f.assert_serves().await;

    #[derive(serde::Serialize)]
    enum Unknown {
        Bogus { x: u8 },
    }
    let unknown = framed(&rmp_serde::to_vec_named(&Unknown::Bogus { x: 1 }).unwrap());
    let oversized = {
        let mut v = 5000u32.to_be_bytes().to_vec();
        v.extend_from_slice(&[0u8; 5000]);
        v
    };
    let huge_header = u32::MAX.to_be_bytes().to_vec();
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let truncated_msgpack = framed(&[0x81, 0xa7, b'R', b'e', b'q']);
    let bad_nonce = framed(&[
        0x81, 0xa5, b'H', b'e', b'l', b'l', b'o', 0x82, 0xa4, b'n', b'o', b'd', b'e', 1, 0xa5,
        b'n', b'o', b'n', b'c', b'e', 0xc4, 1, 0,
    ]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", garbage),
        ("oversized", oversized),
        ("huge length", huge_header),
        ("truncated", truncated_msgpack),
        ("unknown frame", unknown),
        ("short nonce", bad_nonce),
        (
            "response",
            encoded(&Frame::Response {
                id: 1,
                result: Ok(Bytes::new()),
            }),
        ),
        (
            "request",
            encoded(&Frame::Request {
                id: 1,
                body: Bytes::from_static(b"ping"),
            }),
        ),
    ];

    // Before the handshake (a request before it is refused too).
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        assert_closed(s).await;
        f.assert_serves().await;
        let _ = what;
    }
    // Silence: the handshake times out.
    assert_closed(TcpStream::connect(addr).await.unwrap()).await;

    // After a valid handshake.
    let calls = f.service.calls();
    for (what, bytes) in &cases {
        if *what == "request" {
            continue;
        }
        let mut s = raw_authenticated(addr).await;
        s.write_all(bytes).await.unwrap();
        assert_closed(s).await;
        f.assert_serves().await;
    }
    // A handshake frame after the handshake.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&encoded(&Frame::Hello {
        node_id: 1,
        nonce: [0; 32],
        ident: None,
    }))
    .await
    .unwrap();
    assert_closed(s).await;
    assert_eq!(
        f.service.calls(),
        calls + cases.len() - 1,
        "only the good client's calls"
    );
    assert_eq!(
        f.pool.connects(),
        1,
        "the good client's connection survived"
    );

    // A good request on a raw connection is still answered.
    let mut s = raw_authenticated(addr).await;
    s.write_all(&encoded(&Frame::Request {
        id: 9,
        body: Bytes::from_static(b"raw"),
    }))
    .await
    .unwrap();
    assert_eq!(
        read_frame(&mut s).await,
        Frame::Response {
            id: 9,
            result: Ok(echo(CLIENT_ID, b"raw"))
        }
    );
    f.stop().await;
}

#[tokio::test]
async fn random_garbage_from_many_connections_does_not_hurt() {
    let f = fixture().await;
    let addr = f.server_addr();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut conns = Vec::new();
    for i in 0..200 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // A plausible length prefix in front of the noise.
            bytes.splice(0..0, (len as u32).to_be_bytes());
        }
        let authenticated = i % 2 == 0;
        conns.push(tokio::spawn(async move {
            let mut s = if authenticated {
                raw_authenticated(addr).await
            } else {
                TcpStream::connect(addr).await.unwrap()
            };
            // The server may close first; that is fine.
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            assert_closed(s).await;
        }));
    }
    let good = (0..100).map(|_| f.assert_serves());
    join_all(good).await;
    for c in conns {
        c.await.unwrap();
    }
    f.assert_serves().await;
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let mut f = fixture().await;
    f.assert_serves().await;
    let addr = f.server_addr();
    f.stop_server().await;

    // Down: refused (or the dead connection noticed), not a hang.
    let got = f.call(b"ping").await;
    assert!(
        matches!(got, Err(TransportError::Unreachable(_))),
        "{got:?}"
    );

    let server = Server::bind(
        addr,
        config(SERVER_ID, SECRET),
        Arc::new(TestService::default()),
        Faults::default(),
    )
    .await
    .unwrap();
    // The first call may still find the old connection dying; the next one
    // must get through.
    let first = f.call(b"ping").await;
    match first {
        Ok(b) => assert_eq!(b, echo(CLIENT_ID, b"ping")),
        Err(TransportError::Unreachable(_)) => f.assert_serves().await,
        Err(e) => panic!("unexpected {e:?}"),
    }
    assert!(f.pool.connects() >= 2);
    f.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn backoff_does_not_outlast_the_deadline() {
    let cfg = Arc::new(TransportConfig {
        reconnect_backoff_min: Duration::from_secs(60),
        reconnect_backoff_max: Duration::from_secs(60),
        ..(*config(CLIENT_ID, SECRET)).clone()
    });
    let pool = Pool::new(cfg, Faults::default());
    // A port with nothing listening.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let got = pool.call(SERVER_ID, &addr, Bytes::new(), LONG).await;
    assert!(
        matches!(got, Err(TransportError::Unreachable(_))),
        "{got:?}"
    );
    // The next attempt is a minute away: fail now instead of waiting.
    let start = std::time::Instant::now();
    let got = pool.call(SERVER_ID, &addr, Bytes::new(), LONG).await;
    assert!(
        matches!(got, Err(TransportError::Unreachable(ref m)) if m.contains("next attempt")),
        "{got:?}"
    );
    assert!(start.elapsed() < LONG);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_missed_deadline_is_a_timeout_and_forgets_the_call() {
    let f = fixture().await;
    let got = f
        .pool
        .call(
            SERVER_ID,
            &f.addr,
            Bytes::from_static(b"hang"),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(got, Err(TransportError::Timeout));
    assert_eq!(f.pool.in_flight(SERVER_ID), 0);
    f.assert_serves().await;
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}

#[tokio::test]
async fn pending_calls_fail_at_once_when_the_connection_dies() {
    let mut f = fixture().await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (pool, addr) = (f.pool.clone(), f.addr.clone());
            tokio::spawn(async move {
                pool.call(
                    SERVER_ID,
                    &addr,
                    Bytes::from_static(b"hang"),
                    Duration::from_secs(600),
                )
                .await
            })
        })
        .collect();
    f.service.wait_hanging(10).await;
    f.stop_server().await;
    for c in calls {
        let got = tokio::time::timeout(LONG, c)
            .await
            .expect("call still pending")
            .unwrap();
        assert!(
            matches!(got, Err(TransportError::Unreachable(_))),
            "{got:?}"
        );
    }
    f.pool.shutdown().await;
}

#[tokio::test]
async fn pool_shutdown_fails_calls_with_closed() {
    let f = fixture().await;
    let call = {
        let (pool, addr) = (f.pool.clone(), f.addr.clone());
        tokio::spawn(async move {
            pool.call(
                SERVER_ID,
                &addr,
                Bytes::from_static(b"hang"),
                Duration::from_secs(600),
            )
            .await
        })
    };
    f.service.wait_hanging(1).await;
    f.pool.shutdown().await;
    assert_eq!(call.await.unwrap(), Err(TransportError::Closed));
    assert_eq!(f.call(b"ping").await, Err(TransportError::Closed));
    f.stop().await;
}

#[tokio::test]
async fn a_blocked_peer_is_unreachable() {
    let f = fixture().await;
    f.assert_serves().await;

    // Blocked on the client's side: fails at once, nothing sent.
    f.client_faults.block(SERVER_ID);
    assert!(f.client_faults.is_blocked(SERVER_ID));
    let calls = f.service.calls();
    assert!(matches!(
        f.call(b"ping").await,
        Err(TransportError::Unreachable(_))
    ));
    assert_eq!(f.service.calls(), calls);
    f.client_faults.unblock(SERVER_ID);
    f.assert_serves().await;

    // Blocked on the server's side: the request is dropped, the connection
    // closed, and a new connection refused.
    f.server_faults.block(CLIENT_ID);
    let calls = f.service.calls();
    assert!(matches!(
        f.call(b"ping").await,
        Err(TransportError::Unreachable(_))
    ));
    let got = f.call(b"ping").await;
    assert!(
        matches!(got, Err(TransportError::Unreachable(_))),
        "{got:?}"
    );
    assert_eq!(f.service.calls(), calls);
    f.server_faults.heal();
    assert!(!f.server_faults.is_blocked(CLIENT_ID));
    // Past the reconnect backoff (10 ms at first) the link works again.
    let got = f
        .pool
        .call(SERVER_ID, &f.addr, Bytes::from_static(b"ping"), LONG)
        .await;
    assert_eq!(got, Ok(echo(CLIENT_ID, b"ping")));
    f.stop().await;
}

#[tokio::test]
async fn a_delayed_link_delays_requests() {
    let f = fixture().await;
    f.assert_serves().await;
    f.client_faults.delay(SERVER_ID, Duration::from_millis(100));
    let start = std::time::Instant::now();
    f.assert_serves().await;
    assert!(start.elapsed() >= Duration::from_millis(100));
    f.client_faults.delay(SERVER_ID, Duration::ZERO);
    f.assert_serves().await;
    f.client_faults.delay(SERVER_ID, Duration::from_secs(60));
    let got = f
        .pool
        .call(
            SERVER_ID,
            &f.addr,
            Bytes::from_static(b"ping"),
            Duration::from_millis(50),
        )
        .await;
    assert_eq!(got, Err(TransportError::Timeout));
    f.stop().await;
}

#[tokio::test]
async fn too_large_bodies_are_refused_without_touching_the_connection() {
    let small = |id| {
        Arc::new(TransportConfig {
            max_frame_bytes: 4096,
            ..(*config(id, SECRET)).clone()
        })
    };
    let f = fixture_with(small(SERVER_ID), small(CLIENT_ID)).await;
    let body = Bytes::from(vec![0u8; 5000]);
    let got = f.pool.call(SERVER_ID, &f.addr, body, LONG).await;
    assert_eq!(
        got,
        Err(TransportError::TooLarge {
            size: 5000,
            max: 4096 - frame::FRAME_OVERHEAD
        })
    );
    assert_eq!(f.pool.connects(), 0);
    // The largest body that fits goes through.
    let body = Bytes::from(vec![1u8; 4096 - frame::FRAME_OVERHEAD - 8]);
    let got = f.pool.call(SERVER_ID, &f.addr, body.clone(), LONG).await;
    assert_eq!(got, Ok(echo(CLIENT_ID, &body)));
    // A response too large for a frame becomes an error for the caller.
    let got = f.call(b"big").await;
    assert!(
        matches!(got, Err(TransportError::Remote(ref m)) if m.contains("exceeds")),
        "{got:?}"
    );
    f.assert_serves().await;
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_and_the_server_goes_on() {
    let f = fixture().await;
    for body in [&b"panic now"[..], b"panic later"] {
        let got = f
            .pool
            .call(SERVER_ID, &f.addr, Bytes::from_static(body), LONG)
            .await;
        assert!(
            matches!(got, Err(TransportError::Remote(ref m)) if m.contains("panicked")),
            "{got:?}"
        );
    }
    f.assert_serves().await;
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}

#[tokio::test]
async fn many_clients_and_shutdown_with_open_connections() {
    let (server, service) = start_server(config(SERVER_ID, SECRET), Faults::default()).await;
    let addr = server.local_addr().to_string();
    let pools: Vec<_> = (10..20)
        .map(|id| Pool::new(config(id, SECRET), Faults::default()))
        .collect();
    for (i, pool) in pools.iter().enumerate() {
        let got = pool
            .call(SERVER_ID, &addr, Bytes::from_static(b"hi"), LONG)
            .await;
        assert_eq!(got, Ok(echo(10 + i as u64, b"hi")));
    }
    assert_eq!(service.calls(), 10);
    // Idle connections are open: shutdown must still finish.
    tokio::time::timeout(LONG, server.shutdown())
        .await
        .expect("server shutdown hung");
    for pool in pools {
        tokio::time::timeout(LONG, pool.shutdown())
            .await
            .expect("pool shutdown hung");
    }
}

#[test]
fn frames_round_trip_and_use_named_fields() {
    let frames = [
        Frame::Hello {
            node_id: 7,
            nonce: [1; 32],
            ident: None,
        },
        Frame::Hello {
            node_id: 7,
            nonce: [1; 32],
            ident: Some(Ident {
                cluster: 9,
                incarnation: u64::MAX,
            }),
        },
        Frame::Challenge {
            node_id: u64::MAX,
            nonce: [2; 32],
            proof: [3; 32],
            ident: None,
        },
        Frame::Refused {
            reason: "wiped".into(),
        },
        Frame::Proof { proof: [4; 32] },
        Frame::Welcome,
        Frame::Request {
            id: 1,
            body: Bytes::from_static(b"body"),
        },
        Frame::Request {
            id: 2,
            body: Bytes::new(),
        },
        Frame::Response {
            id: 3,
            result: Ok(Bytes::from_static(b"ok")),
        },
        Frame::Response {
            id: 4,
            result: Err("no".into()),
        },
    ];
    for f in &frames {
        let bytes = encoded(f);
        assert_eq!(decode_stream(&bytes, 1 << 20), vec![Ok(f.clone())]);
    }
    let req = encoded(
        frames
            .iter()
            .find(|f| matches!(f, Frame::Request { .. }))
            .expect("a request"),
    );
    assert!(req.windows(4).any(|w| w == b"body"), "fields are named");
    // Bodies are slices of the frame, not copies.
    let payload = Bytes::copy_from_slice(&req[4..]);
    let Ok(Frame::Request { body, .. }) = decode_frame(payload.clone()) else {
        panic!("expected a request")
    };
    let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
    assert!(range.contains(&(body.as_ptr() as usize)));
    // The limit is checked on encode, leaving the buffer as it was.
    let mut buf = BytesMut::from(&b"xy"[..]);
    let big = Frame::Request {
        id: 1,
        body: Bytes::from(vec![0; 100]),
    };
    assert!(matches!(
        encode_frame(&big, 64, &mut buf),
        Err(frame::FrameError::TooLarge { .. })
    ));
    assert_eq!(&buf[..], b"xy");
    // Several frames in one buffer (as a coalesced write produces).
    let mut all = Vec::new();
    for f in &frames {
        all.extend(encoded(f));
    }
    let decoded: Vec<_> = decode_stream(&all, 1 << 20)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(decoded, frames);
}

#[test]
fn deeply_nested_junk_is_refused_without_overflowing_the_stack() {
    // {"Request": {"junk": [[[[...]]]], ...}}: an unknown field is skipped,
    // but its nesting is bounded by the decoder's depth limit.
    let mut payload = vec![0x81, 0xa7];
    payload.extend_from_slice(b"Request");
    payload.extend_from_slice(&[0x81, 0xa4]);
    payload.extend_from_slice(b"junk");
    payload.extend(std::iter::repeat_n(0x91u8, 100_000));
    payload.push(0xc0);
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || decode_frame(Bytes::from(payload)).is_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(result);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from);
    prop_oneof![
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(node_id, nonce)| Frame::Hello {
            node_id,
            nonce,
            ident: None
        }),
        (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(node_id, nonce, proof)| {
            Frame::Challenge {
                node_id,
                nonce,
                proof,
                ident: Some(Ident {
                    cluster: node_id,
                    incarnation: 1,
                }),
            }
        }),
        any::<[u8; 32]>().prop_map(|proof| Frame::Proof { proof }),
        Just(Frame::Welcome),
        (any::<u64>(), bytes()).prop_map(|(id, body)| Frame::Request { id, body }),
        (any::<u64>(), bytes()).prop_map(|(id, b)| Frame::Response { id, result: Ok(b) }),
        (any::<u64>(), ".{0,64}").prop_map(|(id, e)| Frame::Response { id, result: Err(e) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame(Bytes::from(data.clone()));
        let _ = decode_stream(&data, 1024);
        let _ = decode_stream(&framed(&data), 1024);
    }

    #[test]
    fn encoded_frames_round_trip(f in arb_frame()) {
        let bytes = encoded(&f);
        let body_len = match &f {
            Frame::Request { body, .. } | Frame::Response { result: Ok(body), .. } => body.len(),
            Frame::Response { result: Err(e), .. } => e.len(),
            _ => 128,
        };
        prop_assert!(bytes.len() - 4 <= frame::FRAME_OVERHEAD + body_len);
        prop_assert_eq!(decode_stream(&bytes, 1 << 20), vec![Ok(f)]);
    }

    #[test]
    fn mutated_frames_never_panic_the_decoder(
        f in arb_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&f);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        let _ = decode_stream(&bytes, 1 << 20);
        let _ = decode_stream(&bytes[..cut.index(bytes.len() + 1)], 1 << 20);
        let _ = decode_frame(Bytes::from(bytes[4..].to_vec()));
    }
}

/// A TCP proxy to `to` that holds each new connection for `hold` before it
/// relays anything: a link whose handshake takes longer than a short call's
/// deadline (a far-away peer, or one busy starting up).
async fn slow_handshake_proxy(
    to: SocketAddr,
    hold: Duration,
) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, task)
}

/// Raft's replication calls a peer every heartbeat with a deadline of one
/// heartbeat (50 ms). A connection that takes longer than that to set up
/// must still come up: an attempt, once started, finishes on its own time
/// (its connect and handshake timeouts), not the caller's, and is shared by
/// the callers that come meanwhile. Before, every call cut its own attempt
/// off mid-handshake, counted it a failure and backed off: the peer was
/// never reached.
#[tokio::test]
async fn a_handshake_slower_than_every_call_deadline_still_connects() {
    let f = fixture().await;
    let (proxy, proxy_task) =
        slow_handshake_proxy(f.server_addr(), Duration::from_millis(150)).await;
    let deadline = Duration::from_millis(50);
    let mut tick = tokio::time::interval(deadline);
    let mut answered = None;
    for n in 0..100 {
        tick.tick().await;
        let got = f
            .pool
            .call(SERVER_ID, &proxy, Bytes::from_static(b"ping"), deadline)
            .await;
        if got == Ok(echo(CLIENT_ID, b"ping")) {
            answered = Some(n);
            break;
        }
    }
    assert!(
        answered.is_some(),
        "100 calls with a 50 ms deadline never reached a peer whose handshake takes 150 ms"
    );
    // one connection, shared by the callers that waited for it
    assert_eq!(f.pool.connects(), 1);
    proxy_task.abort();
    f.stop().await;
}

/// A TCP proxy to `to` that relays until `mute` is set, then goes silent:
/// it keeps every connection open but forwards nothing either way, as a
/// network cut that drops packets does (no reset, no FIN). While muted it
/// also holds new connections without relaying.
async fn muting_proxy(
    to: SocketAddr,
    mute: Arc<std::sync::atomic::AtomicBool>,
) -> (String, tokio::task::JoinHandle<()>) {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mute: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if mute.load(Ordering::SeqCst) {
                // swallowed: the link is cut; hold the sockets open
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((inbound, _)) = l.accept().await {
            if mute.load(Ordering::SeqCst) {
                held.push(inbound);
                continue;
            }
            let Ok(out) = TcpStream::connect(to).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = out.into_split();
            tokio::spawn(pump(ir, ow, mute.clone()));
            tokio::spawn(pump(or, iw, mute.clone()));
        }
    });
    (addr, task)
}

/// A network cut that drops packets leaves the TCP connection open, and
/// before, calls kept going into it until the kernel gave up (many
/// seconds, growing with the outage): a healed link stayed dead. The pool
/// notices the silence (a ping, then `dead_after`), fails the waiting calls
/// at once and reconnects on the next call.
#[tokio::test]
async fn a_silent_connection_is_closed_and_the_next_call_reconnects() {
    let client_cfg = Arc::new(TransportConfig {
        probe_after: Duration::from_millis(100),
        dead_after: Duration::from_millis(400),
        ..(*config(CLIENT_ID, SECRET)).clone()
    });
    let f = fixture_with(config(SERVER_ID, SECRET), client_cfg).await;
    let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (proxy, proxy_task) = muting_proxy(f.server_addr(), mute.clone()).await;
    let call = async |body: &'static [u8]| {
        f.pool
            .call(SERVER_ID, &proxy, Bytes::from_static(body), LONG)
            .await
    };
    assert_eq!(call(b"one").await, Ok(echo(CLIENT_ID, b"one")));
    mute.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let got = call(b"two").await;
    let took = started.elapsed();
    assert!(
        matches!(&got, Err(TransportError::Unreachable(m)) if m.contains("presumed dead")),
        "{got:?}"
    );
    assert!(
        took < LONG / 2,
        "the silent connection was noticed after {took:?}"
    );
    // healed: the next call takes a new connection
    mute.store(false, Ordering::SeqCst);
    assert_eq!(call(b"three").await, Ok(echo(CLIENT_ID, b"three")));
    assert_eq!(f.pool.connects(), 2);
    proxy_task.abort();
    f.stop().await;
}

/// A call that takes long on a healthy connection is not mistaken for a
/// dead link: the pings are answered meanwhile.
#[tokio::test]
async fn a_slow_call_on_a_live_connection_is_not_cut() {
    let client_cfg = Arc::new(TransportConfig {
        probe_after: Duration::from_millis(50),
        dead_after: Duration::from_millis(200),
        ..(*config(CLIENT_ID, SECRET)).clone()
    });
    let f = fixture_with(config(SERVER_ID, SECRET), client_cfg).await;
    let pool = f.pool.clone();
    let addr = f.addr.clone();
    let hanging = tokio::spawn(async move {
        pool.call(
            SERVER_ID,
            &addr,
            Bytes::from_static(b"hang"),
            Duration::from_secs(1),
        )
        .await
    });
    f.service.wait_hanging(1).await;
    // five times `dead_after` with only the hanging call owed
    let got = hanging.await.unwrap();
    assert_eq!(got, Err(TransportError::Timeout));
    assert_eq!(f.pool.connects(), 1);
    f.assert_serves().await;
    assert_eq!(f.pool.connects(), 1);
    f.stop().await;
}
