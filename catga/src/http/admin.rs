//! The admin routes (opt-in, behind a bearer token): the members with
//! their API addresses, leave, remove a node, snapshot now. Each calls the
//! [`Node`](crate::Node) method of the same name; no cluster logic lives here.
//!
//! | route | does | answers |
//! |---|---|---|
//! | `GET /admin/members` | [`Node::members`](crate::Node::members) | 200, the JSON array (`api_addr` per member) |
//! | `DELETE /admin/members/{id}` | removes node `id` for good | 200 `{"removed": id}`; 404 if `id` is no member |
//! | `POST /admin/leave` | [`Node::leave`](crate::Node::leave) (this node) | 200 `{"left": id, ..}`, then the node is shut down |
//! | `POST /admin/snapshot` | [`Node::snapshot`](crate::Node::snapshot), and waits for it | 200 `{"snapshot_index": n, ..}`; 202 if not done within the request timeout |
//!
//! Without `Authorization: Bearer <token>`, or with another token: 401.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Http, problem, retry_later};
use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The shortest admin token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The longest admin token accepted, in bytes (it travels in a header).
const MAX_TOKEN_BYTES: usize = 4096;

/// The admin routes' credentials: a bearer token, compared in constant
/// time. Give it to [`Http::admin`]; without it the `/admin` routes do not
/// exist (404).
///
/// The token is not kept: only an HMAC of it under a random key, and
/// `Debug` shows neither.
///
/// ```
/// let admin = catga::http::Admin::bearer("a-long-random-token-0123456789")?;
/// # Ok::<(), catga::Error>(())
/// ```
#[derive(Clone)]
pub struct Admin {
    key: [u8; 32],
    expected: [u8; 32],
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Admin {
    /// Admin routes for requests carrying `Authorization: Bearer <token>`.
    /// The token must be at least [`MIN_TOKEN_BYTES`] (16) visible ASCII
    /// characters (no spaces): generate one, e.g. `openssl rand -hex 32`.
    pub fn bearer(token: impl AsRef<str>) -> Result<Admin> {
        let token = token.as_ref();
        let bad = |reason: String| Error::Config {
            setting: "Admin::bearer",
            reason,
        };
        if token.len() < MIN_TOKEN_BYTES {
            return Err(bad(format!(
                "the admin token has {} bytes; use at least {MIN_TOKEN_BYTES} random ones \
                 (e.g. `openssl rand -hex 32`)",
                token.len()
            )));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!(
                "the admin token has {} bytes; at most {MAX_TOKEN_BYTES} fit in a header",
                token.len()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the admin token must be visible ASCII characters without spaces (it is sent \
                 in an HTTP header); e.g. `openssl rand -hex 32`"
                    .into(),
            ));
        }
        let key: [u8; 32] = rand::random();
        let expected = mac(&key, token.as_bytes())
            .map_err(bad)?
            .finalize()
            .into_bytes()
            .into();
        Ok(Admin { key, expected })
    }

    /// [`Admin::bearer`] with the token in the environment variable `var`
    /// (a token in a command line shows in `ps`); an error names the
    /// variable when it is unset or unusable.
    ///
    /// ```no_run
    /// let admin = catga::http::Admin::bearer_from_env("CATGA_ADMIN_TOKEN")?;
    /// # Ok::<(), catga::Error>(())
    /// ```
    pub fn bearer_from_env(var: &str) -> Result<Admin> {
        let token = std::env::var(var).map_err(|e| Error::Config {
            setting: "Admin::bearer_from_env",
            reason: format!(
                "the environment variable {var} ({e}): set it to the admin token, at least \
                 {MIN_TOKEN_BYTES} random characters (e.g. `export {var}=$(openssl rand -hex 32)`)"
            ),
        })?;
        Admin::bearer(token).map_err(|e| match e {
            Error::Config { reason, .. } => Error::Config {
                setting: "Admin::bearer_from_env",
                reason: format!("{var}: {reason}"),
            },
            other => other,
        })
    }

    /// Whether `presented` is the token, in time independent of where it
    /// differs (both sides are MACed; `verify_slice` compares in constant
    /// time, and the MAC hides the token's length).
    fn accepts(&self, presented: &[u8]) -> bool {
        match mac(&self.key, presented) {
            Ok(m) => m.verify_slice(&self.expected).is_ok(),
            Err(_) => false,
        }
    }
}

fn mac(key: &[u8; 32], msg: &[u8]) -> std::result::Result<HmacSha256, String> {
    let mut m = HmacSha256::new_from_slice(key).map_err(|e| format!("HMAC key: {e}"))?;
    m.update(msg);
    Ok(m)
}

/// The admin routes, each behind the token check.
pub(super) fn routes(http: &Http) -> Router<Http> {
    Router::new()
        .route("/admin/members", get(members))
        .route("/admin/members/{id}", delete(remove))
        .route("/admin/leave", post(leave))
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/poisoned/{index}/skip", post(skip_poisoned))
        .route_layer(axum::middleware::from_fn_with_state(http.clone(), guard))
}

/// Why a request was not let through.
enum Denied {
    Missing,
    NotBearer,
    Wrong,
}

fn check(admin: &Admin, headers: &HeaderMap) -> std::result::Result<(), Denied> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Denied::Missing);
    };
    let value = value.as_bytes();
    // the scheme is case-insensitive (RFC 9110 11.1)
    let Some((scheme, token)) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|i| (&value[..i], &value[i + 1..]))
    else {
        return Err(Denied::NotBearer);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Denied::NotBearer);
    }
    if admin.accepts(token.trim_ascii()) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// Lets a request with the admin token through; answers 401 otherwise.
/// Stamps `x-catga-node` on every admin response.
async fn guard(State(h): State<Http>, req: Request, next: Next) -> Response {
    let mut resp = match h.admin.as_deref() {
        // `routes` only mounts the admin routes with an `Admin`
        None => problem(StatusCode::NOT_FOUND, "the admin routes are off".into()),
        Some(admin) => match check(admin, req.headers()) {
            Ok(()) => next.run(req).await,
            Err(why) => {
                tracing::debug!(path = %req.uri().path(), "admin request without a valid token");
                unauthorized(why)
            }
        },
    };
    resp.headers_mut()
        .insert("x-catga-node", h.node_header.clone());
    resp
}

fn unauthorized(why: Denied) -> Response {
    let (error, challenge) = match why {
        Denied::Missing => (
            "this admin route needs the admin token: send the header \
             `Authorization: Bearer <token>` with the token this node's admin routes were \
             configured with (`catga::http::Admin`)",
            r#"Bearer realm="catga-admin""#,
        ),
        Denied::NotBearer => (
            "the Authorization header is not a bearer token: send \
             `Authorization: Bearer <token>`, with the token this node's admin routes were \
             configured with",
            r#"Bearer realm="catga-admin", error="invalid_request""#,
        ),
        Denied::Wrong => (
            "the admin token is wrong: send the token this node's admin routes were \
             configured with (`Authorization: Bearer <token>`)",
            r#"Bearer realm="catga-admin", error="invalid_token""#,
        ),
    };
    let mut r = problem(StatusCode::UNAUTHORIZED, error.into());
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

/// The status of an admin call that failed.
fn admin_error(e: &Error) -> Response {
    match e {
        Error::Timeout {
            reason: crate::error::TimeoutReason::NoLeader,
            ..
        } => retry_later(e.to_string()),
        Error::Timeout { .. } => problem(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        // not tried: something this node needs first (the store) is missing
        Error::ShutDown | Error::Overloaded | Error::Discovery(_) | Error::NotNow(_) => {
            retry_later(e.to_string())
        }
        Error::ClusterMismatch(_) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        // refused by the leader (another change in progress, the last
        // voter): the cluster's state forbids it now
        Error::Membership(_) => problem(StatusCode::CONFLICT, e.to_string()),
        // a member applied the entry, or has not stopped before it: skipping
        // it would make the replicas differ
        Error::Quarantine(_) => problem(StatusCode::CONFLICT, e.to_string()),
        Error::Config { .. } => problem(StatusCode::BAD_REQUEST, e.to_string()),
        _ => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The manual lever for a poison pill (`Quarantine::Manual`): quarantines
/// log entry `index` once every member has stopped before it and none
/// applied it (see `Node::skip_poisoned`).
async fn skip_poisoned(State(h): State<Http>, Path(index): Path<String>) -> Response {
    let Ok(index) = index.parse::<u64>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "`{index}` is not a log index (a number, as `poisoned.index` in `GET /health` \
                 shows it)"
            ),
        );
    };
    tracing::warn!(
        index,
        "admin: quarantining log entry {index} (a poison pill)"
    );
    match h.node.skip_poisoned(index).await {
        Ok(()) => Json(serde_json::json!({ "quarantined": index })).into_response(),
        Err(e) => {
            tracing::warn!(index, error = %e, "admin: quarantining entry {index} failed");
            admin_error(&e)
        }
    }
}

async fn members(State(h): State<Http>) -> Response {
    Json(h.node.members()).into_response()
}

async fn remove(State(h): State<Http>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a node id (a number, as `GET /admin/members` lists them)"),
        );
    };
    let health = h.node.health();
    if !health.members.contains(&id) && !health.learners.contains(&id) {
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "node {id} is not a member of the cluster (voters {:?}, learners {:?}): \
                 nothing to remove",
                health.members, health.learners
            ),
        );
    }
    tracing::info!(node = id, "admin: removing node {id} from the cluster");
    match h.node.remove_for_good(id).await {
        Ok(()) => {
            tracing::info!(node = id, "admin: node {id} removed");
            Json(serde_json::json!({ "removed": id })).into_response()
        }
        Err(e) => {
            tracing::warn!(node = id, error = %e, "admin: removing node {id} failed");
            admin_error(&e)
        }
    }
}

async fn leave(State(h): State<Http>) -> Response {
    let me = h.node.id();
    tracing::info!("admin: node {me} leaves the cluster");
    match h.node.leave().await {
        Ok(()) => Json(serde_json::json!({
            "left": me,
            "note": "this node left the cluster and shut down; stop its process \
                     (its id is never used again)",
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "admin: leaving failed");
            admin_error(&e)
        }
    }
}

async fn snapshot(State(h): State<Http>) -> Response {
    let me = h.node.id();
    // a snapshot taken from now covers at least what is applied now
    let target = h.node.health().applied_index;
    tracing::info!(
        applied = ?target,
        "admin: taking a snapshot on node {me}"
    );
    if let Err(e) = h.node.snapshot().await {
        tracing::warn!(error = %e, "admin: the snapshot could not be started");
        return admin_error(&e);
    }
    let timeout = h.node.request_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let health = h.node.health();
        let done = match (target, health.snapshot_index) {
            (None, _) => true,
            (Some(t), Some(s)) => s >= t,
            (Some(_), None) => false,
        };
        if done {
            return Json(serde_json::json!({
                "node": me,
                "snapshot_index": health.snapshot_index,
                "purged_index": health.purged_index,
            }))
            .into_response();
        }
        if let Some(failed) = health.failed {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, failed);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "node": me,
                    "snapshot_index": health.snapshot_index,
                    "note": format!(
                        "the snapshot was started but did not finish within {timeout:?}; \
                         watch snapshot_index in /health"
                    ),
                })),
            )
                .into_response();
        }
        // a snapshot shows in the node's metrics; re-check at least every
        // 100 ms all the same
        h.node
            .health_changed((deadline - now).min(Duration::from_millis(100)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn only_the_exact_token_passes() {
        let admin = Admin::bearer("0123456789abcdef-token").expect("token");
        assert!(check(&admin, &headers("Bearer 0123456789abcdef-token")).is_ok());
        assert!(check(&admin, &headers("bearer 0123456789abcdef-token")).is_ok());
        assert!(matches!(
            check(&admin, &headers("Bearer 0123456789abcdef-tokeN")),
            Err(Denied::Wrong)
        ));
        assert!(matches!(
            check(&admin, &headers("Bearer 0123456789abcdef-token2")),
            Err(Denied::Wrong)
        ));
        assert!(matches!(
            check(&admin, &headers("Bearer ")),
            Err(Denied::Wrong)
        ));
        assert!(matches!(
            check(&admin, &headers("Basic 0123456789abcdef-token")),
            Err(Denied::NotBearer)
        ));
        assert!(matches!(
            check(&admin, &headers("0123456789abcdef-token")),
            Err(Denied::NotBearer)
        ));
        assert!(matches!(
            check(&admin, &HeaderMap::new()),
            Err(Denied::Missing)
        ));
    }

    #[test]
    fn weak_or_unsendable_tokens_are_refused_with_a_reason() {
        for (token, says) in [
            ("short", "at least 16"),
            ("with a space in the middle", "visible ASCII"),
            ("ünïcödé-but-long-enough", "visible ASCII"),
        ] {
            let e = Admin::bearer(token).expect_err(token).to_string();
            assert!(e.contains(says), "{token}: {e}");
        }
        let e = Admin::bearer_from_env("CATGA_TEST_SURELY_UNSET_VARIABLE")
            .expect_err("unset")
            .to_string();
        assert!(e.contains("CATGA_TEST_SURELY_UNSET_VARIABLE"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let admin = Admin::bearer("0123456789abcdef-token").expect("token");
        let shown = format!("{admin:?}");
        assert!(!shown.contains("0123456789"), "{shown}");
    }
}
