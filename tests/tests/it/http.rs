//! The HTTP front door against a real 3-node cluster, with a real HTTP
//! client: every status code the module documents, a command through a
//! follower, readiness that follows a partition, metrics that parse and
//! move, and bad requests that never reach the log.

use std::time::Duration;

use catga::http::Http;
use catga_tests::harness::{Cluster, T};
use catga_tests::{Explode, GetStock, PlaceOrder, Restock};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Serves `node` over HTTP on an ephemeral port; returns the base URL. The
/// server task ends with the test's runtime.
async fn serve(node: &catga::Node) -> String {
    let http = Http::new(node.clone());
    let app = http
        .routes()
        .route("/restock", catga::http::command::<Restock>())
        .route("/orders", catga::http::command::<PlaceOrder>())
        .route("/explode", catga::http::command::<Explode>())
        .route("/stock", catga::http::query::<GetStock>())
        .with_state(http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = catga::http::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn wait_ready(node: &catga::Node, client: &reqwest::Client, base: &str, want: StatusCode) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status();
        if s == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {s}, wanted {want}"
        );
        // wait for the node's view to change (bounded: readiness also
        // follows time, a leader not heard from)
        node.health_changed(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_queries_over_http_through_a_follower() {
    let c = Cluster::start(3).await;
    let f = c.follower().await;
    let base = serve(c.node(f)).await;
    let client = reqwest::Client::new();

    let r = client
        .post(format!("{base}/restock"))
        .json(&json!({"sku": "apple", "qty": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-catga-node"], f.to_string().as_str());
    assert_eq!(r.json::<Value>().await.unwrap(), json!(3));

    // the handler's Ok is 200 with the value, its Err 422 with the error
    let r = client
        .post(format!("{base}/orders"))
        .json(&json!({"sku": "apple", "qty": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap().is_u64());
    let r = client
        .post(format!("{base}/orders"))
        .json(&json!({"sku": "apple", "qty": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"OutOfStock": {"left": 1}})
    );
    let r = client
        .post(format!("{base}/orders"))
        .json(&json!({"sku": "pear", "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("UnknownSku"));

    // queries: GET with a query string, or POST with a body
    let r = client
        .get(format!("{base}/stock?sku=apple"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    let r = client
        .post(format!("{base}/stock"))
        .json(&json!({"sku": "kiwi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), Value::Null);

    // health as JSON
    let h: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["node_id"], json!(f));
    assert_eq!(h["role"], json!("Follower"));
    c.assert_replicas_equal().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_never_reach_the_log() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let base = serve(c.node(l)).await;
    let client = reqwest::Client::new();
    let before = c.node(l).health().last_log_index;

    let post = |body: Vec<u8>| {
        client
            .post(format!("{base}/restock"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let err = r.json::<Value>().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("tests.Restock"),
        "{err}"
    );
    let r = post(br#"{"sku": "a", "qty": -1}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(vec![b' '; catga::http::MAX_BODY + 1]).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = client
        .get(format!("{base}/stock?nosuchfield=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // a thousand malformed or oversized requests; the oversized ones on
    // connections of their own (the server closes a connection after a
    // 413, and a pooled request queued on it would fail in the client)
    let big_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut bad = Vec::new();
    for i in 0..1000 {
        let body = match i % 4 {
            0 => b"[".to_vec(),
            1 => br#"{"sku": 7}"#.to_vec(),
            2 => vec![b'{'; 2000],
            _ => vec![b'x'; catga::http::MAX_BODY + 10],
        };
        let on = if i % 4 == 3 { &big_client } else { &client };
        bad.push(
            on.post(format!("{base}/restock"))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        );
    }
    for (i, r) in futures::future::join_all(bad).await.into_iter().enumerate() {
        match r {
            Ok(r) if i % 4 == 3 => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
            Ok(r) => assert_eq!(r.status(), StatusCode::BAD_REQUEST),
            // the server answers 413 as soon as it sees the length and
            // closes: a client still sending the body may see the reset
            Err(_) if i % 4 == 3 => {}
            Err(e) => panic!("request {i}: {e}"),
        }
    }
    assert_eq!(
        c.node(l).health().last_log_index,
        before,
        "a rejected request reached the log"
    );
    // and the node still serves
    let r = post(br#"{"sku": "ok", "qty": 1}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    c.shutdown().await;
}

/// A 413 is answered before the body is read, so the server closes that
/// connection; it must say so (`Connection: close`), or a pooling client
/// sends its next request on the closing connection and that request fails
/// (`IncompleteMessage`), as CI saw once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_after_a_413_on_a_pooled_connection_succeeds() {
    let c = Cluster::start(1).await;
    let base = serve(c.node(c.leader().await)).await;
    let client = reqwest::Client::new();
    for i in 0..200 {
        let r = client
            .post(format!("{base}/restock"))
            .header("content-type", "application/json")
            .body(vec![b' '; catga::http::MAX_BODY + 1])
            .send()
            .await;
        // the client may still be sending the body when the server answers
        // and closes: a reset here is the oversized request's own outcome
        if let Ok(r) = r {
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(
                r.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "a 413 must close its connection openly"
            );
        }
        let r = client
            .get(format!("{base}/stock?sku=a"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} after a 413: {e}"));
        assert_eq!(r.status(), StatusCode::OK);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_a_partition_and_metrics_parse_and_move() {
    let c = Cluster::start(3).await;
    let f = c.follower().await;
    let base = serve(c.node(f)).await;
    let client = reqwest::Client::new();
    wait_ready(c.node(f), &client, &base, StatusCode::OK).await;

    c.isolate(f);
    wait_ready(c.node(f), &client, &base, StatusCode::SERVICE_UNAVAILABLE).await;
    c.heal();
    wait_ready(c.node(f), &client, &base, StatusCode::OK).await;

    let scrape = || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // every sample line is `name{labels} value`
        let mut samples = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("a sample");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`"));
            samples.insert(name.to_string(), v);
        }
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        samples
    };
    let restocks =
        r#"catga_http_requests_total{message="tests.Restock",kind="command",status="200"}"#;
    let m0 = scrape().await;
    assert_eq!(m0.get("catga_ready"), Some(&1.0));
    assert_eq!(m0.get("catga_lost_quorum"), Some(&0.0));
    // after the heal the node may be follower or (rarely) leader: one role
    let roles: f64 = m0
        .iter()
        .filter(|(k, _)| k.starts_with("catga_role{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(roles, 1.0, "{m0:#?}");
    for _ in 0..3 {
        let r = client
            .post(format!("{base}/restock"))
            .json(&json!({"sku": "m", "qty": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // a handler that panics: 500, counted
    let r = client
        .post(format!("{base}/explode"))
        .json(&json!({"touch_first": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // a write through a follower is acknowledged once the leader applied
    // it: wait until this node has too before reading its applied index
    let leader = c.leader().await;
    let applied = c
        .node(leader)
        .health()
        .applied_index
        .expect("the leader applied");
    c.node(f).wait_applied(applied, T).await.unwrap();
    let m1 = scrape().await;
    assert_eq!(m1.get(restocks), Some(&3.0), "{m1:#?}");
    assert!(m1["catga_applied_index"] > m0["catga_applied_index"]);
    assert!(m1["catga_leader_commit_index"] >= m1["catga_applied_index"] - 1.0);
    assert_eq!(m1.get("catga_failed"), Some(&0.0));
    // four writes, proposed here or forwarded (the node is usually a follower)
    let attempts = |m: &std::collections::BTreeMap<String, f64>| {
        ["local", "forwarded"]
            .iter()
            .map(|r| {
                m.get(&format!(r#"catga_write_attempts_total{{route="{r}"}}"#))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert!(attempts(&m1) - attempts(&m0) >= 4.0, "{m1:#?}");
    assert_eq!(m1.get("catga_handler_panics_total"), Some(&1.0), "{m1:#?}");
    assert!(m1.contains_key("catga_retries_total"), "{m1:#?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_applies_once_on_any_node() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    let (via_leader, via_follower) = (serve(c.node(l)).await, serve(c.node(f)).await);
    let client = reqwest::Client::new();
    let order = |base: String, key: &'static str| {
        client
            .post(format!("{base}/restock"))
            .header("Idempotency-Key", key)
            .json(&json!({"sku": "idem", "qty": 5}))
            .send()
    };
    let first = order(via_follower.clone(), "order-77").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.json::<Value>().await.unwrap();
    // the "lost response" retry lands on another node: same answer, no new apply
    let again = order(via_leader.clone(), "order-77").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = order(via_leader.clone(), "order-78").await.unwrap();
    assert_eq!(other.json::<Value>().await.unwrap(), json!(10));
    let stock = client
        .get(format!("{via_follower}/stock?sku=idem"))
        .send()
        .await
        .unwrap();
    let _ = stock;
    assert_eq!(
        c.node(l)
            .query(
                GetStock { sku: "idem".into() },
                catga::Consistency::Linearizable
            )
            .await
            .unwrap(),
        Some(10),
        "applied once per key"
    );
    let bad = client
        .post(format!("{via_leader}/restock"))
        .header("Idempotency-Key", "")
        .json(&json!({"sku": "idem", "qty": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_every_node_as_json() {
    let c = Cluster::start(3).await;
    let l = c.leader().await;
    let f = c.follower().await;
    let base = serve(c.node(f)).await;
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + T;
    let members: Value = loop {
        let r = client.get(format!("{base}/members")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let alive = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["liveness"] == "alive")
            .count();
        if alive == 3 && v.as_array().unwrap().iter().any(|m| m["role"] == "leader") {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        c.node(f).health_changed(Duration::from_millis(100)).await;
    };
    let list = members.as_array().unwrap();
    let ids: Vec<u64> = list.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for m in list {
        let id = m["id"].as_u64().unwrap();
        let role = if id == l { "leader" } else { "follower" };
        assert_eq!(m["role"], role, "{m}");
        assert_eq!(m["addr"], c.addrs[id as usize - 1], "{m}");
        assert!(m["load"].is_u64() && m["metadata"].is_object(), "{m}");
    }
    c.shutdown().await;
}
