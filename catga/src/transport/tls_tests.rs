//! Mutual TLS on the transport: real sockets on 127.0.0.1, certificates
//! from a fresh development CA per test. Each refusal test also checks that
//! the server keeps serving a good peer, and that its log says why.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::tls::{DevCa, TlsConfig};

const SERVER_ID: u64 = 2;
const CLIENT_ID: u64 = 1;
const LONG: Duration = Duration::from_secs(10);

struct Echo;

impl Service for Echo {
    fn call(&self, from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let mut out = from.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        Box::pin(async move { Ok(Bytes::from(out)) })
    }
}

fn cfg(node_id: u64, tls: Option<TlsConfig>) -> Arc<TransportConfig> {
    Arc::new(TransportConfig {
        node_id,
        secret: b"s".to_vec(),
        reconnect_backoff_min: Duration::from_millis(1),
        reconnect_backoff_max: Duration::from_millis(1),
        tls,
        ..TransportConfig::default()
    })
}

fn tls_for(ca: &DevCa, cert: &crate::tls::NodeCert) -> TlsConfig {
    TlsConfig::from_pem(ca.ca_pem(), &cert.cert_pem, &cert.key_pem).unwrap()
}

async fn server(tls: Option<TlsConfig>) -> Server {
    Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        cfg(SERVER_ID, tls),
        Arc::new(Echo),
        Faults::default(),
    )
    .await
    .unwrap()
}

fn echo(from: u64, body: &[u8]) -> Bytes {
    let mut out = from.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    Bytes::from(out)
}

async fn call(pool: &Pool, addr: &str, body: Bytes) -> Result<Bytes, TransportError> {
    pool.call(SERVER_ID, addr, body, LONG).await
}

/// The log lines written while the returned guard lives, on this thread
/// (the tests run on a current-thread runtime, so every task's lines).
/// The bytes, and a counter bumped on every write (waited on, not polled).
#[derive(Clone, Default)]
struct Log(Arc<(parking_lot::Mutex<Vec<u8>>, tokio::sync::watch::Sender<u64>)>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().extend_from_slice(b);
        self.0.1.send_modify(|n| *n += 1);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
        let log = Log::default();
        let l = log.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || l.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        (log, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock()).into_owned()
    }

    /// Waits until a line contains every one of `words`.
    async fn wait_for(&self, words: &[&str]) {
        let deadline = tokio::time::Instant::now() + LONG;
        let mut writes = self.0.1.subscribe();
        loop {
            // marked seen before the text is read: a line written after
            // this read wakes the wait below
            writes.borrow_and_update();
            let text = self.text();
            if text.lines().any(|l| words.iter().all(|w| l.contains(w))) {
                return;
            }
            let changed = tokio::time::timeout_at(deadline, writes.changed()).await;
            assert!(
                matches!(changed, Ok(Ok(()))),
                "no log line with {words:?} in:\n{text}"
            );
        }
    }
}

/// A good client of the server: proves it still serves.
async fn assert_serves(ca: &DevCa, addr: &str) {
    let pool = Pool::new(
        cfg(CLIENT_ID, Some(tls_for(ca, &ca.node(CLIENT_ID).unwrap()))),
        Faults::default(),
    );
    assert_eq!(
        call(&pool, addr, Bytes::from_static(b"hi")).await,
        Ok(echo(CLIENT_ID, b"hi"))
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn tls_carries_many_calls_and_large_frames_whole_and_in_order() {
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    let pool = Pool::new(
        cfg(CLIENT_ID, Some(ca.tls_config(CLIENT_ID).unwrap())),
        Faults::default(),
    );
    // many small frames at once, and frames of many TLS records each
    let bodies: Vec<Bytes> = (0..300u32)
        .map(|i| {
            let len = match i % 3 {
                0 => 10,
                1 => 20_000,
                _ => 1 << 20,
            };
            Bytes::from(vec![(i % 251) as u8; len + i as usize])
        })
        .collect();
    let answers = join_all(bodies.iter().map(|b| call(&pool, &addr, b.clone()))).await;
    for (b, a) in bodies.iter().zip(answers) {
        assert_eq!(a, Ok(echo(CLIENT_ID, b)));
    }
    assert_eq!(pool.connects(), 1, "one connection carried them all");
    pool.shutdown().await;
    s.shutdown().await;
}

/// A key update (TLS 1.3) in the middle of a connection's traffic: the
/// client asks for one, the server's reader answers with its own (sent by
/// the writer, in order with the frames), and calls go on both ways.
#[tokio::test]
async fn calls_go_on_across_key_updates_both_ways() {
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    let pool = Pool::new(
        cfg(CLIENT_ID, Some(ca.tls_config(CLIENT_ID).unwrap())),
        Faults::default(),
    );
    for round in 0..5u8 {
        let bodies: Vec<Bytes> = (0..50u8)
            .map(|i| Bytes::from(vec![round ^ i; 100 + 997 * i as usize]))
            .collect();
        let calls = join_all(bodies.iter().map(|b| call(&pool, &addr, b.clone())));
        let (answers, updated) = tokio::join!(calls, async { pool.update_tls_keys(SERVER_ID) });
        assert!(updated || round == 0, "no TLS session to update");
        for (b, a) in bodies.iter().zip(answers) {
            assert_eq!(a, Ok(echo(CLIENT_ID, b)));
        }
    }
    assert!(pool.update_tls_keys(SERVER_ID));
    assert_eq!(
        call(&pool, &addr, Bytes::from_static(b"after")).await,
        Ok(echo(CLIENT_ID, b"after"))
    );
    assert_eq!(pool.connects(), 1, "the connection survived every update");
    pool.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_the_log_says_why() {
    let (log, _g) = Log::capture();
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    let other = DevCa::new().unwrap();
    // a client whose certificate another CA signed (trusting ours, so that
    // it is the server that refuses)
    let intruder = tls_for(&ca, &other.node(CLIENT_ID).unwrap());
    let pool = Pool::new(cfg(CLIENT_ID, Some(intruder)), Faults::default());
    let r = call(&pool, &addr, Bytes::from_static(b"hi")).await;
    assert!(r.is_err(), "{r:?}");
    log.wait_for(&["refused a connection", "TLS handshake", "UnknownIssuer"])
        .await;
    // and a server with another CA's certificate is refused by the client
    let fake = tls_for(&ca, &other.node(SERVER_ID).unwrap());
    client_refuses(&ca, fake, "UnknownIssuer").await;
    assert_serves(&ca, &addr).await;
    pool.shutdown().await;
    s.shutdown().await;
}

/// A client with a good certificate dials a server that serves `fake`: the
/// handshake fails, and its error contains `says`.
async fn client_refuses(ca: &DevCa, fake: TlsConfig, says: &str) {
    let fake = server(Some(fake)).await;
    let good = Pool::new(
        cfg(CLIENT_ID, Some(ca.tls_config(CLIENT_ID).unwrap())),
        Faults::default(),
    );
    let r = call(
        &good,
        &fake.local_addr().to_string(),
        Bytes::from_static(b"hi"),
    )
    .await;
    match r {
        Err(TransportError::Handshake(e)) => assert!(e.contains(says), "{e}"),
        other => panic!("the client trusted a server it must refuse ({says}): {other:?}"),
    }
    good.shutdown().await;
    fake.shutdown().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let (log, _g) = Log::capture();
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    let expired = tls_for(&ca, &ca.expired_node(CLIENT_ID).unwrap());
    let pool = Pool::new(cfg(CLIENT_ID, Some(expired)), Faults::default());
    let r = call(&pool, &addr, Bytes::from_static(b"hi")).await;
    assert!(r.is_err(), "{r:?}");
    log.wait_for(&[
        "refused a connection",
        "TLS handshake",
        "certificate expired",
    ])
    .await;
    assert_serves(&ca, &addr).await;
    pool.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_certificate_of_another_node_cannot_pose_as_this_one() {
    let (log, _g) = Log::capture();
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    // node 3's valid certificate, used by a client claiming to be node 1
    let pool = Pool::new(
        cfg(CLIENT_ID, Some(tls_for(&ca, &ca.node(3).unwrap()))),
        Faults::default(),
    );
    let r = call(&pool, &addr, Bytes::from_static(b"hi")).await;
    assert!(r.is_err(), "node 3's certificate passed for node 1: {r:?}");
    log.wait_for(&["claiming to be node 1", "not for node 1"])
        .await;
    // a server with node 3's certificate at node 2's address is refused by
    // the client, which dials node 2 by its name
    client_refuses(&ca, tls_for(&ca, &ca.node(3).unwrap()), "node-2.catga").await;
    assert_serves(&ca, &addr).await;
    pool.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn plaintext_on_a_tls_port_is_refused_either_way() {
    let (log, _g) = Log::capture();
    let ca = DevCa::new().unwrap();
    let s = server(Some(ca.tls_config(SERVER_ID).unwrap())).await;
    let addr = s.local_addr().to_string();
    // a plaintext node
    let plain = Pool::new(cfg(CLIENT_ID, None), Faults::default());
    let r = call(&plain, &addr, Bytes::from_static(b"hi")).await;
    assert!(r.is_err(), "{r:?}");
    log.wait_for(&["refused a connection", "TLS handshake"])
        .await;
    // raw bytes: the server closes the connection
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(LONG, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    // a TLS node dialling a plaintext server
    let plain_server = server(None).await;
    let tls_pool = Pool::new(
        cfg(CLIENT_ID, Some(ca.tls_config(CLIENT_ID).unwrap())),
        Faults::default(),
    );
    let r = call(
        &tls_pool,
        &plain_server.local_addr().to_string(),
        Bytes::from_static(b"hi"),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_serves(&ca, &addr).await;
    for p in [plain, tls_pool] {
        p.shutdown().await;
    }
    s.shutdown().await;
    plain_server.shutdown().await;
}

/// A TCP forwarder that keeps every byte it passes, both ways.
async fn recording_proxy(to: String) -> (String, Arc<parking_lot::Mutex<Vec<u8>>>) {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            let Ok(out) = TcpStream::connect(&to).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = out.into_split();
            tokio::spawn(pump(ir, ow, rec.clone()));
            tokio::spawn(pump(or, iw, rec.clone()));
        }
    });
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        rec: Arc<parking_lot::Mutex<Vec<u8>>>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                return;
            }
            rec.lock().extend_from_slice(&buf[..n]);
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    (addr, seen)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_recording_proxy_sees_the_content_in_plaintext_and_none_with_tls() {
    const MARKER: &[u8] = b"MARKER-7f3a-do-not-leak";
    let ca = DevCa::new().unwrap();
    for tls in [false, true] {
        let mk = |id| tls.then(|| ca.tls_config(id).unwrap());
        let s = server(mk(SERVER_ID)).await;
        let (proxy, seen) = recording_proxy(s.local_addr().to_string()).await;
        let pool = Pool::new(cfg(CLIENT_ID, mk(CLIENT_ID)), Faults::default());
        assert_eq!(
            call(&pool, &proxy, Bytes::from_static(MARKER)).await,
            Ok(echo(CLIENT_ID, MARKER))
        );
        let seen = seen.lock().clone();
        assert!(!seen.is_empty());
        assert_eq!(
            contains(&seen, MARKER),
            !tls,
            "tls {tls}: the marker was {}in the captured stream",
            if tls { "" } else { "not " }
        );
        pool.shutdown().await;
        s.shutdown().await;
    }
}

#[tokio::test]
async fn reloaded_files_serve_new_connections_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new().unwrap();
    let (c, cert, key) = ca.write_node_files(dir.path(), SERVER_ID).unwrap();
    let tls = TlsConfig::from_pem_files(&c, &cert, &key).unwrap();
    let s = server(Some(tls.clone())).await;
    let addr = s.local_addr().to_string();
    let served_cert = async || {
        let roots = tls.roots();
        let me = ca.node(CLIENT_ID).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                crate::tls::certs("cert", me.cert_pem.as_bytes()).unwrap(),
                crate::tls::key(me.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let conn = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(tls.server_name(SERVER_ID).unwrap(), tcp)
            .await
            .unwrap();
        conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let first = served_cert().await;
    // a half-rotated pair (a new certificate, the old key) does not load
    let new = ca.node(SERVER_ID).unwrap();
    std::fs::write(&cert, &new.cert_pem).unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(served_cert().await, first);
    std::fs::write(&key, &new.key_pem).unwrap();
    tls.reload().unwrap();
    let second = served_cert().await;
    assert_ne!(second, first);
    assert_eq!(
        second,
        crate::tls::certs("cert", new.cert_pem.as_bytes()).unwrap()[0].to_vec()
    );
    assert_serves(&ca, &addr).await;
    s.shutdown().await;
}
