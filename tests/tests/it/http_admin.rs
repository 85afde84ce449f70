//! The admin routes over real HTTP: absent unless enabled, 401 without the
//! token, the members with every node's API address, removing a node,
//! a snapshot, and a leave, each through its route; and the API address
//! registered in discovery.

use std::time::Duration;

use catga::discovery::{Discovery, DiscoveryConfig, MemoryStore};
use catga::http::{Admin, Http};
use catga_tests::harness::{Cluster, T};
use catga_tests::servers::unique;
use catga_tests::{GetStock, Restock};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "admin-test-token-0123456789abcdef";

/// Serves `node` on `listener`: the message routes, and the admin routes
/// when `admin` is set. The server ends when the node stops (or with the
/// test's runtime); the handle says when.
fn serve_on(
    node: &catga::Node,
    listener: tokio::net::TcpListener,
    admin: bool,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let mut http = Http::new(node.clone());
    if admin {
        http = http.admin(Admin::bearer(TOKEN).expect("a valid token"));
    }
    let app = http
        .routes()
        .route("/restock", catga::http::command::<Restock>())
        .route("/stock", catga::http::query::<GetStock>())
        .with_state(http);
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stopped = {
        let node = node.clone();
        async move {
            let _ = node.stopped().await;
        }
    };
    let server = tokio::spawn(catga::http::serve_with_shutdown(listener, app, stopped));
    (base, server)
}

async fn serve(node: &catga::Node, admin: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    serve_on(node, listener, admin).0
}

/// Three nodes, each told its HTTP address with `api_addr` and serving the
/// admin routes there; returns the cluster, each node's base URL and its
/// server task.
async fn cluster_with_api_addrs() -> (
    Cluster,
    Vec<String>,
    Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    catga_tests::harness::init_tracing();
    let raft: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut http = Vec::new();
    for _ in 0..3 {
        http.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let mut c = Cluster {
        nodes: Vec::new(),
        addrs: raft
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect(),
        dir: tempfile::tempdir().expect("tempdir"),
        snapshot_every: 10_000,
        request_timeout: Duration::from_secs(10),
    };
    let mut bases = Vec::new();
    let mut servers = Vec::new();
    for (i, (r, h)) in raft.into_iter().zip(http).enumerate() {
        let api = h.local_addr().expect("addr").to_string();
        let node = c
            .builder(i as u64 + 1)
            .listener(r)
            .api_addr(api)
            .start()
            .await
            .expect("start");
        let (base, server) = serve_on(&node, h, true);
        bases.push(base);
        servers.push(server);
        c.nodes.push(Some(node));
    }
    (c, bases, servers)
}

/// Sends an admin request with the token.
async fn admin(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
) -> reqwest::Response {
    client
        .request(method, url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request")
}

/// Waits until every node in `nodes` sees exactly `voters` as voters.
async fn wait_voters(nodes: &[&catga::Node], voters: &[u64]) {
    wait_views(
        nodes,
        |h| h.members == voters,
        &format!("voters {voters:?}"),
    )
    .await
}

/// Waits until every one of `nodes` sees exactly these voters and learners.
async fn wait_membership(nodes: &[&catga::Node], voters: &[u64], learners: &[u64]) {
    wait_views(
        nodes,
        |h| h.members == voters && h.learners == learners,
        &format!("voters {voters:?} and learners {learners:?}"),
    )
    .await
}

/// Waits until `ok` holds for every one of `nodes`' health.
async fn wait_views(nodes: &[&catga::Node], ok: impl Fn(&catga::Health) -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let views: Vec<catga::Health> = nodes.iter().map(|n| n.health()).collect();
        if views.iter().all(&ok) {
            return;
        }
        let seen: Vec<(Vec<u64>, Vec<u64>)> = views
            .iter()
            .map(|h| (h.members.clone(), h.learners.clone()))
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted {what} everywhere, saw (voters, learners) {seen:?}"
        );
        let waits = nodes
            .iter()
            .map(|n| Box::pin(n.health_changed(Duration::from_millis(100))));
        futures::future::select_all(waits).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_absent_unless_enabled_and_refuse_requests_without_the_token() {
    let c = Cluster::start(1).await;
    let node = c.node(1);
    node.wait_ready(T).await.expect("ready");
    let client = reqwest::Client::new();

    // off: no admin route exists, whatever the token
    let off = serve(node, false).await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/members"),
        (reqwest::Method::DELETE, "/admin/members/1"),
        (reqwest::Method::POST, "/admin/leave"),
        (reqwest::Method::POST, "/admin/snapshot"),
        (reqwest::Method::POST, "/admin/poisoned/3/skip"),
    ] {
        let r = admin(&client, method.clone(), format!("{off}{path}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    // the public routes are there either way
    let r = client
        .get(format!("{off}/members"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);

    // on: 401 without the token, with another one, or another scheme; the
    // body says what to send, and nothing happens
    let on = serve(node, true).await;
    let before = node.health().snapshot_index;
    for (auth, challenge) in [
        (None, r#"Bearer realm="catga-admin""#),
        (
            Some(format!("Bearer {TOKEN}x")),
            r#"Bearer realm="catga-admin", error="invalid_token""#,
        ),
        (
            Some("Bearer admin-test-token-0123456789abcdeF".to_string()),
            r#"Bearer realm="catga-admin", error="invalid_token""#,
        ),
        (
            Some(format!("Basic {TOKEN}")),
            r#"Bearer realm="catga-admin", error="invalid_request""#,
        ),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/members"),
            (reqwest::Method::POST, "/admin/snapshot"),
            (reqwest::Method::POST, "/admin/leave"),
            (reqwest::Method::DELETE, "/admin/members/1"),
            (reqwest::Method::POST, "/admin/poisoned/3/skip"),
        ] {
            let mut req = client.request(method.clone(), format!("{on}{path}"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.expect("request");
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(r.headers()["www-authenticate"], challenge);
            assert_eq!(r.headers()["x-catga-node"], "1");
            let body: Value = r.json().await.expect("a JSON body");
            let error = body["error"].as_str().expect("an error message");
            assert!(error.contains("Authorization: Bearer"), "{error}");
        }
    }
    assert_eq!(
        node.health().snapshot_index,
        before,
        "a 401 changed nothing"
    );
    assert!(node.health().members.contains(&1), "a 401 removed nothing");

    // the last voter cannot leave: 409, and it keeps serving
    let r = admin(&client, reqwest::Method::POST, format!("{on}/admin/leave")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("last voter"),
        "{body}"
    );
    // nor be removed
    let r = admin(
        &client,
        reqwest::Method::DELETE,
        format!("{on}/admin/members/1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // nothing is poisoned: quarantining an entry is refused, and says why
    let r = admin(
        &client,
        reqwest::Method::POST,
        format!("{on}/admin/poisoned/2/skip"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let r = admin(
        &client,
        reqwest::Method::POST,
        format!("{on}/admin/poisoned/x/skip"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    node.wait_ready(T).await.expect("still serving");
    assert_eq!(node.health().members, vec![1]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_through_the_admin_route_covers_what_was_applied() {
    let c = Cluster::start(1).await;
    let node = c.node(1);
    node.wait_ready(T).await.expect("ready");
    let client = reqwest::Client::new();
    let base = serve(node, true).await;
    for i in 0..20 {
        let r = client
            .post(format!("{base}/restock"))
            .json(&json!({"sku": "admin-snapshot", "qty": i}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let applied = node.health().applied_index.expect("applied");
    assert!(
        node.health().snapshot_index.is_none_or(|s| s < applied),
        "no snapshot yet at {applied}"
    );

    let r = admin(
        &client,
        reqwest::Method::POST,
        format!("{base}/admin/snapshot"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-catga-node"], "1");
    let body: Value = r.json().await.expect("json");
    let index = body["snapshot_index"].as_u64().expect("a snapshot index");
    assert!(index >= applied, "snapshot at {index}, applied {applied}");
    assert_eq!(node.health().snapshot_index, Some(index));
    // and the state is unchanged by it
    let r = client
        .get(format!("{base}/stock?sku=admin-snapshot"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.json::<Value>().await.expect("json"), json!(190));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_show_api_addrs_and_nodes_are_removed_and_leave_through_the_admin_routes() {
    let (mut c, bases, mut servers) = cluster_with_api_addrs().await;
    let leader = c.leader().await;
    let client = reqwest::Client::new();

    // every member's api_addr, as each node's own setting says, once the
    // pings have carried them (within a second)
    let want: Vec<(u64, String)> = bases
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u64 + 1, b.trim_start_matches("http://").to_string()))
        .collect();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let r = admin(
            &client,
            reqwest::Method::GET,
            format!("{}/admin/members", bases[0]),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let members: Vec<Value> = r.json().await.expect("json");
        let seen: Vec<(u64, String)> = members
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap_or(0),
                    m["api_addr"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if seen == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted api_addrs {want:?}, saw {seen:?}"
        );
        c.node(1).health_changed(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.node(2).api_addr().as_deref(),
        Some(want[1].1.as_str()),
        "Node::api_addr is the builder's setting"
    );
    // the public list shows them too
    let members: Vec<Value> = client
        .get(format!("{}/members", bases[1]))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(members[1]["api_addr"], json!(want[1].1));

    // remove a follower through the other follower (forwarded to the leader)
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (via, gone) = (followers[0], followers[1]);
    let base = &bases[via as usize - 1];
    let r = admin(
        &client,
        reqwest::Method::DELETE,
        format!("{base}/admin/members/{gone}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"removed": gone})
    );
    // two voters would be even: the other follower becomes a learner; the
    // removal is a second change after that one: both nodes must have seen
    // it before `via` is asked for its list
    wait_membership(&[c.node(leader), c.node(via)], &[leader], &[via]).await;
    let members: Vec<Value> = admin(
        &client,
        reqwest::Method::GET,
        format!("{base}/admin/members"),
    )
    .await
    .json()
    .await
    .expect("json");
    assert!(
        members
            .iter()
            .all(|m| m["id"] != json!(gone) || m["role"] == json!("removed")),
        "node {gone} is gone from the members: {members:?}"
    );
    // removing it again, an unknown id, or no id at all
    for (path, status) in [
        (format!("/admin/members/{gone}"), StatusCode::NOT_FOUND),
        ("/admin/members/99".to_string(), StatusCode::NOT_FOUND),
        ("/admin/members/three".to_string(), StatusCode::BAD_REQUEST),
    ] {
        let r = admin(&client, reqwest::Method::DELETE, format!("{base}{path}")).await;
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.expect("json");
        assert!(body["error"].is_string(), "{body}");
    }
    c.kill(gone).await;

    // the other follower leaves through its own route
    let r = admin(
        &client,
        reqwest::Method::POST,
        format!("{base}/admin/leave"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["left"], json!(via));
    assert_eq!(c.node(via).health().role, catga::Role::Shutdown);
    // its HTTP server, told to stop with the node, closed after answering
    let server = servers.remove(via as usize - 1);
    tokio::time::timeout(T, server)
        .await
        .expect("the server of the node that left stops")
        .expect("the server task")
        .expect("the server ends cleanly");
    wait_voters(&[c.node(leader)], &[leader]).await;
    // the cluster of one goes on
    let lbase = &bases[leader as usize - 1];
    let r = client
        .post(format!("{lbase}/restock"))
        .json(&json!({"sku": "admin-left", "qty": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_addr_is_registered_in_discovery() {
    catga_tests::harness::init_tracing();
    let store = MemoryStore::new();
    let name = unique("admin-api");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = catga::cluster()
        .node_id(1)
        .listen("127.0.0.1:0")
        .data_dir(dir.path().join("n1"))
        .secret("admin-api-secret")
        .discovery(store.clone())
        .cluster_name(name.as_str())
        .bootstrap_expect(1)
        .voters(1)
        .discovery_timings(Duration::from_millis(50), Duration::from_millis(500))
        .api_addr("127.0.0.1:18080")
        .start()
        .await
        .expect("start");
    let listed = store
        .discovery(DiscoveryConfig::new(name.as_str()))
        .expect("discovery")
        .list()
        .await
        .expect("list");
    let me = listed
        .iter()
        .find(|n| n.id == 1)
        .expect("node 1 registered");
    assert_eq!(me.api_addr.as_deref(), Some("127.0.0.1:18080"));
    node.wait_ready(T).await.expect("ready");
    let members = node.members();
    assert_eq!(members[0].api_addr.as_deref(), Some("127.0.0.1:18080"));
    node.shutdown().await;
}

#[tokio::test]
async fn a_malformed_api_addr_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (addr, says) in [
        ("http://127.0.0.1:8080", "scheme"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "port 0"),
    ] {
        let e = catga::cluster()
            .node_id(1)
            .listen("127.0.0.1:0")
            .data_dir(dir.path().join("n1"))
            .api_addr(addr)
            .start()
            .await
            .expect_err(addr)
            .to_string();
        assert!(e.contains("api_addr") && e.contains(says), "{addr}: {e}");
    }
}
