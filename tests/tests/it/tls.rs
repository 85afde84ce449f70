//! Mutual TLS between real nodes: what a recording proxy on the path sees,
//! and certificate rotation under load. (The transport's own TLS tests,
//! refusals included, are in `catga/src/transport/tls_tests.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catga::{Consistency, Node};
use catga_tests::harness::{T, init_tracing};
use catga_tests::{GetStock, Restock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Recording = Arc<std::sync::Mutex<Vec<u8>>>;

/// A TCP forwarder to `to` that keeps every byte it passes, both ways.
async fn recording_proxy(to: String, rec: Recording) -> String {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        rec: Recording,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                return;
            }
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
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
    addr
}

fn builder(id: u64, dir: &std::path::Path) -> catga::ClusterBuilder {
    catga::cluster()
        .node_id(id)
        .data_dir(dir.join(format!("n{id}")))
        .heartbeat_interval(Duration::from_millis(50))
        .election_timeout(Duration::from_millis(300), Duration::from_millis(600))
        .request_timeout(Duration::from_secs(10))
}

/// Waits until node `n` serves `sku`'s stock as `want` locally.
async fn wait_stock(n: &Node, sku: &str, want: u32) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = n.send(GetStock { sku: sku.into() }).await.unwrap();
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} has {got:?} of {sku}",
            n.id()
        );
        let _ = n.health_changed(Duration::from_millis(50)).await;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every link between three nodes runs through a recording proxy (each
/// node is known to the others by its proxy's address). A command whose
/// content is a marker is written; with TLS the marker never appears in
/// what the proxies saw, in plaintext it does (so the test can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_proxy_between_nodes_sees_no_command_content_with_tls() {
    init_tracing();
    for tls in [true, false] {
        let marker = format!("MARKER-{:016x}", rand::random::<u64>());
        let dir = tempfile::tempdir().unwrap();
        let rec: Recording = Arc::default();
        let listeners: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut proxies = Vec::new();
        for l in &listeners {
            proxies.push(recording_proxy(l.local_addr().unwrap().to_string(), rec.clone()).await);
        }
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut b = builder(id, dir.path())
                .listener(l)
                .advertise(proxies[i].clone());
            for (j, p) in proxies.iter().enumerate() {
                if j != i {
                    b = b.peer(j as u64 + 1, p.clone());
                }
            }
            if tls {
                b = b.tls(catga_tests::tls::config(id));
            }
            nodes.push(b.start().await.expect("start"));
        }
        // written through every node: forwarded to the leader, replicated
        for (k, n) in nodes.iter().enumerate() {
            n.send(Restock {
                sku: marker.clone(),
                qty: 1,
            })
            .await
            .unwrap();
            let _ = k;
        }
        for n in &nodes {
            wait_stock(n, &marker, 3).await;
        }
        let seen = rec.lock().unwrap().clone();
        assert!(seen.len() > 1000, "the proxies saw {} bytes", seen.len());
        assert_eq!(
            contains(&seen, marker.as_bytes()),
            !tls,
            "tls {tls}: the marker was {}in the {} bytes captured",
            if tls { "" } else { "not " },
            seen.len()
        );
        for n in nodes {
            n.shutdown().await;
        }
    }
}

/// The certificate a TLS client is served at `addr`, dialling node `id`.
async fn served_certificate(addr: &str, id: u64) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let ca = catga_tests::tls::ca();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let me = ca.node(99).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![rustls::pki_types::CertificateDer::from_pem_slice(me.cert_pem.as_bytes()).unwrap()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("node-{id}.catga")).unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

/// Every node's certificate and key files are replaced while a client
/// writes; the files are picked up without a restart (no `reload` call:
/// the change itself), every node then serves its new certificate on new
/// connections, the links are cut and healed so that the nodes reconnect
/// with the new certificates, and no write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_write() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = catga_tests::tls::ca();
    let listeners: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut nodes = Vec::new();
    let mut files = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let tls_dir = dir.path().join(format!("tls{id}"));
        let (c, cert, key) = ca.write_node_files(&tls_dir, id).unwrap();
        let tls = catga::TlsConfig::from_pem_files(&c, &cert, &key).unwrap();
        let mut b = builder(id, dir.path()).listener(l).tls(tls);
        for (j, a) in addrs.iter().enumerate() {
            if j != i {
                b = b.peer(j as u64 + 1, a.clone());
            }
        }
        nodes.push(b.start().await.expect("start"));
        files.push((cert, key));
    }
    let nodes = Arc::new(nodes);
    let before: Vec<Vec<u8>> = futures::future::join_all(
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| served_certificate(a, i as u64 + 1)),
    )
    .await;

    // the follower to cut off later; the load goes through the other two
    let leader = loop {
        if let Some(l) = nodes[0].health().leader {
            break l;
        }
        let _ = nodes[0].health_changed(Duration::from_millis(100)).await;
    };
    let follower = (1..=3u64).find(|i| *i != leader).unwrap();
    let through: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != follower).collect();

    // the load: writes until told to stop
    let stop = Arc::new(AtomicBool::new(false));
    // the acknowledged writes, watched (no polling)
    let done = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let writer = {
        let (nodes, stop, done) = (nodes.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut k = 0usize;
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = &nodes[through[k % through.len()]];
                k += 1;
                match n
                    .send(Restock {
                        sku: "rot".into(),
                        qty: 1,
                    })
                    .await
                {
                    Ok(_) => {
                        done.send_modify(|d| *d += 1);
                    }
                    Err(e) => failures.push(format!("via node {}: {e}", n.id())),
                }
            }
            failures
        })
    };
    let wait_writes = async |more: u64| {
        let mut rx = done.subscribe();
        let target = *rx.borrow() + more;
        tokio::time::timeout(T, rx.wait_for(|d| *d >= target))
            .await
            .expect("writes stalled")
            .expect("the writer is gone");
    };
    wait_writes(50).await;

    // rotate: new certificates and keys, renamed over the old files
    let mut fresh = Vec::new();
    for (i, (cert, key)) in files.iter().enumerate() {
        let new = ca.node(i as u64 + 1).unwrap();
        catga::tls::write_atomic(key, new.key_pem.as_bytes(), true).unwrap();
        catga::tls::write_atomic(cert, new.cert_pem.as_bytes(), false).unwrap();
        fresh.push(pem_der(new.cert_pem.as_bytes()));
    }
    // every node serves its new certificate on new connections (the
    // files are looked at, at most once a second, when one is made)
    for (i, a) in addrs.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let now = served_certificate(a, i as u64 + 1).await;
            if now == fresh[i] {
                break;
            }
            assert_eq!(
                now,
                before[i],
                "node {} serves an unknown certificate",
                i + 1
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} still serves its old certificate",
                i + 1
            );
            // not a wait for a condition: each attempt is the new
            // connection that makes the node look at its files (at most
            // once a second), so the attempts are paced, until the deadline
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_writes(50).await;
    // the nodes' connections to each other are made anew, with the new
    // certificates on both ends: a follower is cut off and healed
    for n in nodes.iter() {
        if n.id() == follower {
            (1..=3).for_each(|o| catga::testing::faults(n).block(o));
        } else {
            catga::testing::faults(n).block(follower);
        }
    }
    wait_writes(50).await;
    for n in nodes.iter() {
        catga::testing::faults(n).heal();
    }
    wait_writes(50).await;
    stop.store(true, Ordering::SeqCst);
    let failures = writer.await.unwrap();
    assert!(failures.is_empty(), "writes failed: {failures:?}");
    // the healed follower caught up over its new connections
    let total = *done.borrow() as u32;
    for n in nodes.iter() {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let got = n
                .query(GetStock { sku: "rot".into() }, Consistency::Local)
                .await
                .unwrap();
            if got == Some(total) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} has {got:?} of {total}",
                n.id()
            );
            let _ = n.health_changed(Duration::from_millis(50)).await;
        }
    }
    for n in Arc::into_inner(nodes).unwrap() {
        n.shutdown().await;
    }
}

/// A GET over TLS to `addr` (dialled as `localhost`), with `client`'s
/// certificate if given; the response's head and body, or why it failed.
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    client: Option<&catga::tls::NodeCert>,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let ca = catga_tests::tls::ca();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![
                    rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes())
                        .unwrap(),
                ],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The HTTP door over TLS: HTTPS answers, plaintext HTTP on the same port
/// gets no HTTP answer, and with client certificates required a client
/// without one is refused while one with a certificate of the CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_serves_https_and_can_require_client_certificates() {
    let c = catga_tests::harness::Cluster::start(1).await;
    c.leader().await;
    let ca = catga_tests::tls::ca();
    let dir = tempfile::tempdir().unwrap();
    let server = ca.server("localhost").unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("api.pem"),
        dir.path().join("api.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let http = catga::http::Http::new(c.node(1).clone());
    let app = http.routes().with_state(http);

    for client_certs in [false, true] {
        let mut tls = catga::http::HttpTls::from_pem_files(&cert, &key).unwrap();
        if client_certs {
            tls = tls.require_client_certs(&ca_file).unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(catga::http::serve_tls(listener, app.clone(), tls));

        // plaintext HTTP on the TLS port: no HTTP answer
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(T, plain.read_to_end(&mut got)).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
            "plaintext HTTP was answered"
        );

        let anonymous = https_get(addr, "/health", None).await;
        let with_cert = https_get(addr, "/health", Some(&ca.node(7).unwrap())).await;
        let ok =
            |r: &Result<String, String>| r.as_ref().is_ok_and(|b| b.starts_with("HTTP/1.1 200"));
        assert!(ok(&with_cert), "{with_cert:?}");
        assert_eq!(
            ok(&anonymous),
            !client_certs,
            "client certificates required: {client_certs}; without one: {anonymous:?}"
        );
        server.abort();
    }
    c.shutdown().await;
}
