//! Exactly-once through HTTP retries, with the leader killed (`kill -9`)
//! while requests are in flight: every `POST /orders` sent with an
//! `Idempotency-Key` and retried on another node until it succeeds is
//! applied once, and a retry of one that had succeeded returns the same
//! order id. Nodes are OS processes serving `catga::http` (`--http`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga_tests::process::{Proc, Spec, free_addr};
use reqwest::StatusCode;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Each key's first answer (status and body), if it got one.
type Answers = Arc<Mutex<BTreeMap<String, Option<(StatusCode, Value)>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_retries_after_the_leader_is_killed_mid_request_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let https: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut procs = Vec::new();
    for i in 1..=3u64 {
        let spec = Spec {
            args: vec!["--http".into(), https[i as usize - 1].clone()],
            ..Spec::member(i, &addrs, dir.path())
        };
        procs.push(Some(Proc::start(&spec).await.unwrap()));
    }
    let leader = procs[0].as_ref().unwrap().wait_leader(T).await.unwrap();
    let stock = 1_000_000u32;
    procs[leader - 1]
        .as_ref()
        .unwrap()
        .ok(&format!("restock apple {stock}"))
        .await
        .unwrap();

    // four clients send keyed orders to the leader's HTTP port, one after
    // another, until their request fails (the leader is gone)
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // key -> the first attempt's answer (status, body), if it got one
    let first: Answers = Arc::default();
    let (ok_tx, mut ok_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let url = format!("http://{}/orders", https[leader - 1]);
    let mut clients = Vec::new();
    for c in 0..4 {
        let (client, first, url, ok_tx) =
            (client.clone(), first.clone(), url.clone(), ok_tx.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("order-{c}-{i}");
                first.lock().unwrap().insert(key.clone(), None);
                let r = client
                    .post(&url)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"sku": "apple", "qty": 1}))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                let status = r.status();
                let Ok(body) = r.json::<Value>().await else {
                    return;
                };
                first.lock().unwrap().insert(key, Some((status, body)));
                if status != StatusCode::OK {
                    return;
                }
                let _ = ok_tx.send(());
            }
        }));
    }
    drop(ok_tx);
    // kill it mid-stream, with requests in flight
    for _ in 0..40 {
        ok_rx.recv().await.expect("orders succeed before the kill");
    }
    procs[leader - 1].take().unwrap().kill9().await;
    for c in clients {
        c.await.unwrap();
    }
    let first = Arc::try_unwrap(first).unwrap().into_inner().unwrap();
    let unknown = first
        .values()
        .filter(|v| !matches!(v, Some((s, _)) if *s == StatusCode::OK))
        .count();
    println!(
        "{} keyed orders sent, {unknown} without a 200 when the leader died",
        first.len()
    );
    assert!(unknown >= 1, "no request was in flight at the kill");

    // every key retried on a surviving node until it succeeds
    let survivor = (leader % 3) + 1;
    let sp = procs[survivor - 1].as_ref().unwrap();
    sp.wait_health(T, |f| {
        f.len() == 5 && f[2] != "none" && f[2] != leader.to_string() && f[4] == "true"
    })
    .await
    .unwrap();
    let url = format!("http://{}/orders", https[survivor - 1]);
    for (key, was) in &first {
        let deadline = tokio::time::Instant::now() + T;
        let (status, body) = loop {
            let r = client
                .post(&url)
                .header("Idempotency-Key", key)
                .json(&json!({"sku": "apple", "qty": 1}))
                .send()
                .await;
            if let Ok(r) = r {
                let status = r.status();
                let body = r.json::<Value>().await.unwrap_or(Value::Null);
                if status == StatusCode::OK {
                    break (status, body);
                }
                // 503/504 while the cluster settles: retry
                assert!(
                    status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::GATEWAY_TIMEOUT,
                    "{key}: {status} {body}"
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key}: no 200 on retry"
            );
            sp.call("changed 100", Duration::from_secs(2)).await;
        };
        if let Some((s, b)) = was
            && *s == StatusCode::OK
        {
            assert_eq!(
                (&status, &body),
                (s, b),
                "{key}: a retry got another answer"
            );
        }
    }
    // each key applied exactly once: the stock went down by one per key
    let left = sp.ok("stock! apple").await.unwrap();
    assert_eq!(
        left,
        (stock - first.len() as u32).to_string(),
        "{} keys, stock {stock} -> {left}",
        first.len()
    );
}
