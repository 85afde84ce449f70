//! An oversized body gets its 413 whatever the client (issue 20, item 5):
//! a client that writes the whole body before it reads (reqwest, without
//! `Expect: 100-continue`) used to see "Broken pipe" instead, because the
//! server answered and closed while the body was still arriving.

use catga::http::{Http, MAX_BODY};
use catga_tests::harness::Cluster;
use catga_tests::{GetStock, Restock};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn serve(node: &catga::Node) -> String {
    let http = Http::new(node.clone());
    let app = http
        .routes()
        .route("/restock", catga::http::command::<Restock>())
        .route("/stock", catga::http::query::<GetStock>())
        .with_state(http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = catga::http::serve(listener, app).await;
    });
    format!("{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_sees_413_for_2_and_8_mib_bodies_every_time() {
    let c = Cluster::start(1).await;
    let addr = serve(c.node(c.leader().await)).await;
    let url = format!("http://{addr}/restock");
    let pooled = reqwest::Client::new();
    // 2 MiB (the size the issue saw fail), and 8 MiB: more than the
    // socket buffers hold here, so that the client is still writing when
    // the answer comes, whatever the machine's timing
    let bodies = [vec![b' '; 2 * MAX_BODY], vec![b' '; 8 * MAX_BODY]];
    for i in 0..20 {
        let body = &bodies[i / 2 % 2];
        // a fresh client (a fresh connection) every other time
        let fresh;
        let client = if i % 2 == 0 {
            &pooled
        } else {
            fresh = reqwest::Client::new();
            &fresh
        };
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("try {i}: the 413 never reached the client: {e:?}"));
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "try {i}");
        let text = r.text().await.expect("the 413's body");
        assert!(text.contains("exceeds"), "{text}");
        // and the pooled client goes on working
        let ok = pooled
            .get(format!("http://{addr}/stock?sku=a"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the request after try {i}: {e}"));
        assert_eq!(ok.status(), StatusCode::OK);
    }
    c.shutdown().await;
}

/// A chunked body (no `Content-Length`) over the limit, from a raw client
/// that writes it all before it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_oversized_body_gets_413_after_it_was_sent() {
    let c = Cluster::start(1).await;
    let addr = serve(c.node(c.leader().await)).await;
    for _ in 0..5 {
        let mut tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        tcp.write_all(
            format!(
                "POST /restock HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("headers");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent <= 8 * MAX_BODY {
            tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .expect("the body is read, not refused");
            tcp.write_all(&chunk).await.expect("chunk");
            tcp.write_all(b"\r\n").await.expect("chunk end");
            sent += chunk.len();
        }
        tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("the answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    c.shutdown().await;
}
