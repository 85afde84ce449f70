//! The HTTP front door (cargo feature `http`): axum routes for load
//! balancers (`/health`, `/ready`), Prometheus (`/metrics`), the members
//! of the cluster (`/members`), any
//! command or query as a JSON endpoint, with no per-type code, and,
//! opt-in behind a bearer token, admin routes (members, leave, remove a
//! node, snapshot now: see [`Admin`]).
//!
//! ```rust,ignore
//! let http = catga::http::Http::new(node.clone());
//! let app = http
//!     .routes() // /health, /ready, /metrics, /members
//!     .route("/orders", catga::http::command::<PlaceOrder>())
//!     .route("/stock", catga::http::query::<GetStock>())
//!     .with_state(http);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! catga::http::serve(listener, app).await?;
//! ```
//!
//! Status codes, the same for every endpoint:
//!
//! | what happened | status | body |
//! |---|---|---|
//! | the handler returned `Ok(v)` (or a plain value) | 200 | `v` as JSON |
//! | the handler returned `Err(e)` | 422 | `e` as JSON |
//! | malformed JSON, or a query string that does not fit the query | 400 | `{"error": ...}` |
//! | a body over [`MAX_BODY`] (read and dropped up to [`DRAIN_MAX`], so that the client sees the answer) | 413 + `Connection: close` | `{"error": ...}` |
//! | no leader within the request timeout (nothing was applied) | 503 + `Retry-After` | `{"error": ...}` |
//! | overloaded, or the node is shutting down | 503 + `Retry-After` | `{"error": ...}` |
//! | the node's peers refuse it (wiped data dir, another cluster: [`crate::Health::refused`]); `/health` too | 503 | `{"error": ...}` |
//! | timeout with an unknown outcome (the command may still apply, once) | 504 | `{"error": ..., "outcome": "unknown..."}` |
//! | anything else (a handler panicked, a version mismatch) | 500 | `{"error": ...}` |
//!
//! A command sent with an `Idempotency-Key` header is applied once whatever
//! node its retries reach, and every retry gets the first attempt's answer
//! ([`Node::send_keyed`]).
//!
//! Every response carries `x-catga-node` (the id of the node that answered).
//! A rejected request never reaches the log.
//!
//! The admin routes exist only on an [`Http`] given an [`Admin`]
//! (`Http::new(node).admin(Admin::bearer(token)?)`; otherwise `/admin/..`
//! is 404), and answer 401 to a request without that token:
//!
//! | route | does | answers |
//! |---|---|---|
//! | `GET /admin/members` | [`Node::members`], each with its `api_addr` | 200, the JSON array |
//! | `DELETE /admin/members/{id}` | removes node `id` for good (recorded in the discovery store, if any, then [`Node::remove_node`] through the leader) | 200 `{"removed": id}`; 404 if `id` is no member; 409 if the leader refuses (another change in progress, the last voter) |
//! | `POST /admin/leave` | [`Node::leave`]: this node leaves the cluster and shuts down | 200 `{"left": id, ..}`; 409 for the last voter |
//! | `POST /admin/snapshot` | [`Node::snapshot`], and waits until it covers what was applied | 200 `{"snapshot_index": n, ..}`; 202 if not done within the request timeout |
//!
//! No leader within the request timeout is 503 + `Retry-After`, as for
//! commands; a missing or wrong token is 401 with `WWW-Authenticate:
//! Bearer` and a body that says what to send.

mod admin;
mod answer;
mod metrics;
mod tls;

use std::sync::Arc;
use std::time::Instant;

pub use axum;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::{ApplyError, Error, TimeoutReason};
use crate::message::{Command, Handled, Query};
use crate::node::{Node, Role};
use metrics::Metrics;

pub use admin::{Admin, MIN_TOKEN_BYTES};
pub use tls::{HttpTls, serve_tls, serve_tls_with_shutdown};

/// Serves `app` on `listener` with `TCP_NODELAY` on every connection (without
/// it, small responses wait for the client's delayed ACK: ~40 ms each).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// [`serve`] until `signal` resolves, then stops accepting connections and
/// returns once the requests in flight are answered. With
/// `node.stopped()` as the signal, the process can exit after an admin
/// `POST /admin/leave` (the leave's answer still reaches its client):
///
/// ```no_run
/// # async fn f(node: catga::Node, app: catga::http::axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let stopped = {
///     let node = node.clone();
///     async move {
///         let why = node.stopped().await;
///         tracing::info!("node stopped ({why}): closing the HTTP server");
///     }
/// };
/// catga::http::serve_with_shutdown(listener, app, stopped).await?;
/// # Ok(()) }
/// ```
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    app: Router,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}

/// The largest request body accepted (1 MiB); larger ones get 413.
pub const MAX_BODY: usize = 1 << 20;

/// The state the routes share: the node they drive and its metrics.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    node: Node,
    /// `x-catga-node` of every response: this node's id, encoded once.
    node_header: HeaderValue,
    metrics: Arc<Metrics>,
    /// The admin routes' credentials; `None`: no admin routes.
    admin: Option<Arc<Admin>>,
}

impl Http {
    /// Routes over `node`.
    pub fn new(node: Node) -> Http {
        Http {
            node_header: HeaderValue::from(node.id()),
            node,
            metrics: Arc::new(Metrics::new()),
            admin: None,
        }
    }

    /// Adds the admin routes to [`routes`](Http::routes) (`/admin/members`,
    /// `DELETE /admin/members/{id}`, `/admin/leave`, `/admin/snapshot`: see
    /// the module docs), each answering only requests with
    /// `Authorization: Bearer <token>`. To keep them off the public port,
    /// serve a second `Http` of the same node, with `admin`, on an
    /// internal address.
    ///
    /// ```no_run
    /// # async fn f(node: catga::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// use catga::http::{Admin, Http};
    /// let http = Http::new(node).admin(Admin::bearer_from_env("CATGA_ADMIN_TOKEN")?);
    /// let app = http.routes().with_state(http);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// catga::http::serve(listener, app).await?;
    /// # Ok(()) }
    /// ```
    pub fn admin(mut self, admin: Admin) -> Http {
        self.admin = Some(Arc::new(admin));
        self
    }

    /// `/health` (the node's [`crate::Health`] as JSON), `/ready` (200 when
    /// the node is in a cluster with a known leader and has applied what it
    /// knows to be committed, 503 otherwise), `/metrics` (Prometheus
    /// text) and `/members` ([`Node::members`] as a JSON array: id, addr,
    /// api_addr, role, liveness, load, metadata, last_seen_ms); with
    /// [`admin`](Http::admin), the admin routes too. Add your message
    /// routes, then `.with_state(http)`.
    pub fn routes(&self) -> Router<Http> {
        let public = Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics_text))
            .route("/members", get(members));
        match self.admin {
            Some(_) => public.merge(admin::routes(self)),
            None => public,
        }
    }
}

/// A `POST` route whose JSON body is the command `M`; answers with the
/// handler's result (see the module docs for status codes).
pub fn command<M>() -> MethodRouter<Http>
where
    M: Handled + Command,
    M::Output: Serialize,
{
    // `Request`, not the `HeaderMap` extractor: that one clones the headers
    post(|State(h): State<Http>, req: Request| async move {
        let started = Instant::now();
        let span = span::<M>(&h, "command");
        let resp = async {
            let (parts, body) = req.into_parts();
            let msg: M = match read_json(&parts.headers, body).await {
                Ok(m) => m,
                Err(r) => return r,
            };
            let sent = match idempotency_key(&parts.headers) {
                // boxed: `send_keyed`'s future is large, and would
                // make every request's future as large (see read_body)
                Ok(Some(key)) => Box::pin(h.node.send_keyed(key, msg)).await,
                Ok(None) => h.node.send(msg).await,
                Err(r) => return r,
            };
            match sent {
                Ok(out) => output::<M>(&out),
                Err(e) => error_response(&e, true),
            }
        }
        .instrument(span)
        .await;
        h.finish::<M>("command", started, resp)
    })
}

/// A route for the query `M`: `GET` with the query's fields in the query
/// string (`/stock?sku=apple`), or `POST` with a JSON body.
pub fn query<M>() -> MethodRouter<Http>
where
    M: Handled + Query,
    M::Output: Serialize,
{
    async fn run<M>(h: Http, msg: Result<M, Response>) -> Response
    where
        M: Handled + Query,
        M::Output: Serialize,
    {
        let started = Instant::now();
        let span = span::<M>(&h, "query");
        let resp = async {
            match msg {
                Ok(m) => match h.node.send(m).await {
                    Ok(out) => output::<M>(&out),
                    Err(e) => error_response(&e, false),
                },
                Err(r) => r,
            }
        }
        .instrument(span)
        .await;
        h.finish::<M>("query", started, resp)
    }
    get(|State(h): State<Http>, RawQuery(q): RawQuery| async move {
        let msg = serde_urlencoded::from_str::<M>(q.as_deref().unwrap_or("")).map_err(|e| {
            problem(
                StatusCode::BAD_REQUEST,
                format!("the query string does not fit `{}`: {e}", M::NAME),
            )
        });
        run::<M>(h, msg).await
    })
    .post(|State(h): State<Http>, req: Request| async move {
        let (parts, body) = req.into_parts();
        let msg = read_json::<M>(&parts.headers, body).await;
        run::<M>(h, msg).await
    })
}

impl Http {
    fn finish<M: Handled>(
        &self,
        kind: &'static str,
        started: Instant,
        mut resp: Response,
    ) -> Response {
        self.metrics
            .request(M::NAME, kind, resp.status().as_u16(), started.elapsed());
        resp.headers_mut()
            .insert("x-catga-node", self.node_header.clone());
        resp
    }
}

/// The request's span. Whether a command is forwarded is read from the
/// node's health only when the span is recorded: `health()` reads
/// openraft's metrics under their lock, takes four others and allocates,
/// for a field nobody sees when the span is off.
fn span<M: Handled>(h: &Http, kind: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "catga.http",
        message = M::NAME,
        kind,
        node = h.node.id(),
        forwarded = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let forwarded = kind == "command" && h.node.health().role != Role::Leader;
        span.record("forwarded", forwarded);
    }
    span
}

/// The `Idempotency-Key` header, if any: a retry with the same key, on any
/// node, gets the first attempt's answer and the command applies once.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 256 => Ok(Some(k.to_string())),
        _ => Err(problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 256 visible ASCII characters".into(),
        )),
    }
}

/// How much of an oversized body is read, and dropped, before the 413 is
/// sent. A client that writes its whole body before it reads (reqwest,
/// most clients without `Expect: 100-continue`) sees a connection closed
/// under an unread body as a reset ("Broken pipe"), never the 413; read to
/// the end, the 413 reaches it. A larger body is answered at once (its
/// client may see the reset: reading it all would cost more than it is
/// worth).
pub const DRAIN_MAX: usize = 16 * MAX_BODY;

/// The longest an oversized body is read before the 413 is sent anyway (a
/// slow client must not hold the task).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a body was not accepted.
enum BodyError {
    /// Over [`MAX_BODY`] (read to its end if it was at most [`DRAIN_MAX`]).
    TooLarge,
    /// The client broke off, or the body could not be read.
    Broken(String),
}

/// Reads a body of at most [`MAX_BODY`] bytes. An oversized one (by its
/// `Content-Length`, or by what arrives) is read on and dropped, up to
/// [`DRAIN_MAX`] bytes and [`DRAIN_TIME`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX) {
        return Err(BodyError::TooLarge);
    }
    if declared.is_some_and(|n| n <= MAX_BODY) {
        // the common case: hyper holds the body to its declared length
        return axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| BodyError::Broken(e.to_string()));
    }
    // boxed: its timer and stream would otherwise sit in every request's
    // future, which axum moves into a box of its own (a memcpy of the whole
    // future per request)
    Box::pin(read_body_unsized(declared, body)).await
}

/// [`read_body`] of a body without a `Content-Length`, or an oversized one.
async fn read_body_unsized(declared: Option<usize>, body: Body) -> Result<Bytes, BodyError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let oversized = declared.is_some_and(|n| n > MAX_BODY);
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            seen = seen.saturating_add(chunk.len());
            if seen > DRAIN_MAX {
                return Err(BodyError::TooLarge);
            }
            if !oversized && seen <= MAX_BODY {
                kept.extend_from_slice(&chunk);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIME, read).await {
        Ok(Ok(())) if !oversized && seen <= MAX_BODY => Ok(Bytes::from(kept)),
        Ok(Ok(())) => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(e),
        Err(_) if oversized || seen > MAX_BODY => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken(format!(
            "the body did not arrive within {DRAIN_TIME:?}"
        ))),
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes and decodes it as `M`.
async fn read_json<M: DeserializeOwned + Handled>(
    headers: &HeaderMap,
    body: Body,
) -> Result<M, Response> {
    let bytes = match read_body(headers, body).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            let mut resp = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {MAX_BODY} bytes"),
            );
            // the connection is closed after a 413 (an undrained body
            // leaves it unusable, and a client sending that much is not
            // worth keeping): say so, or a pooling client sends its next
            // request on a connection the server is closing
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(resp);
        }
        Err(BodyError::Broken(e)) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid `{}`: {e}", M::NAME),
        )
    })
}

/// A handler's output as a response: `Err` of a `Result` is the handler's
/// typed error (422), anything else is the answer (200). Encoded once,
/// straight into the body (no `serde_json::Value` in between).
fn output<M: Handled>(out: &M::Output) -> Response
where
    M::Output: Serialize,
{
    // serde encodes a `Result` as {"Ok": v} or {"Err": e}; only a real
    // `Result` output is unwrapped (not a user type that looks like one)
    match answer::as_result(out) {
        Some(Ok(ok)) => return json_body(StatusCode::OK, ok),
        Some(Err(err)) => return json_body(StatusCode::UNPROCESSABLE_ENTITY, err),
        None => {}
    }
    match serde_json::to_vec(out) {
        Ok(body) => json_body(StatusCode::OK, body),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the answer of `{}` does not encode as JSON: {e}", M::NAME),
        ),
    }
}

/// A response of JSON encoded already.
fn json_body(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[derive(Serialize)]
struct Problem<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
}

fn problem(status: StatusCode, error: String) -> Response {
    (
        status,
        Json(Problem {
            error,
            outcome: None,
        }),
    )
        .into_response()
}

fn retry_later(error: String) -> Response {
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, error);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The one mapping from catga's errors to status codes. For a command whose
/// outcome is unknown the body says so (`"outcome": "unknown"`): retry with
/// the same `Idempotency-Key` to apply it once.
fn error_response(e: &Error, is_command: bool) -> Response {
    let mut r = status_of(e, is_command);
    if is_command
        && e.outcome() == crate::error::Outcome::Unknown
        && r.status() != StatusCode::GATEWAY_TIMEOUT
    {
        r = (
            r.status(),
            r.headers().clone(),
            Json(Problem {
                error: e.to_string(),
                outcome: Some("unknown: the command may have been applied; retry with the same Idempotency-Key"),
            }),
        )
            .into_response();
    }
    r
}

fn status_of(e: &Error, is_command: bool) -> Response {
    match e {
        // an election, or no majority: another node may not do better,
        // but this one may in a moment
        Error::Timeout {
            reason: TimeoutReason::NoLeader,
            ..
        } => retry_later(e.to_string()),
        Error::Timeout { .. } if is_command => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(Problem {
                error: e.to_string(),
                outcome: Some(
                    "unknown: the command may still be applied, once; retry with the same Idempotency-Key",
                ),
            }),
        )
            .into_response(),
        Error::Timeout { .. } => problem(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        Error::Overloaded | Error::ShutDown | Error::NotNow(_) => retry_later(e.to_string()),
        // too big for a frame between nodes: the request must change
        Error::TooLarge { .. } => problem(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        // a node its peers refuse is no replica: another node answers (no
        // Retry-After: this one will not, until an operator acts)
        Error::ClusterMismatch(_) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Error::Apply(ApplyError::Stale { .. }) => problem(StatusCode::CONFLICT, e.to_string()),
        // the command is a quarantined poison pill: it was never applied and
        // never will be, on any replica; retrying it gets the same answer
        Error::Apply(ApplyError::Poisoned { .. }) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        // nothing was written; it can be sent once the rolling upgrade is done
        Error::NotUpgraded { .. } => problem(StatusCode::CONFLICT, e.to_string()),
        _ => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn health(State(h): State<Http>) -> Response {
    let health = h.node.health();
    // a refused node is not a replica: a load balancer must not keep it
    let status = if health.refused.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(health)).into_response()
}

async fn members(State(h): State<Http>) -> Response {
    Json(h.node.members()).into_response()
}

async fn ready(State(h): State<Http>) -> Response {
    let health = h.node.health();
    let status = if health.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

async fn metrics_text(State(h): State<Http>) -> Response {
    match h.metrics.render(&h.node.health(), h.node.counts()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timeout(reason: TimeoutReason) -> Error {
        Error::Timeout {
            waited: Duration::from_secs(1),
            reason,
        }
    }

    #[test]
    fn statuses_are_decided_by_the_error_type_not_its_text() {
        let status = |e: &Error, command| status_of(e, command).status();
        // no leader: retry later, whatever the text says
        let no_leader = timeout(TimeoutReason::NoLeader);
        assert_eq!(status(&no_leader, true), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            status_of(&no_leader, false)
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
        // a leader that did not answer: the outcome is unknown
        let slow = timeout(TimeoutReason::Leader {
            last: "no leader known".into(),
        });
        assert_eq!(status(&slow, true), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            status(&timeout(TimeoutReason::NoAnswer { node: 2 }), false),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status(&Error::NotNow("the store is down".into()), false),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(
                &Error::TooLarge {
                    what: "request",
                    size: 10,
                    max: 5
                },
                false
            ),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(&Error::ClusterMismatch("removed".into()), false),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
