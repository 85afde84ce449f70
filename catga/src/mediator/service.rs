//! The mediator's side of a remote call: runs a query by its wire name on
//! this node's state (the registry's type-erased runner, the same read path
//! `node.query` takes), or this node's handlers of an event, or answers a
//! ping. Bad input is an error for the caller, never a panic here.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::wire::{Failure, Reply, Request, decode, encode};
use super::{Mediator, Shared};
use crate::context::EventContext;
use crate::error::{ApplyError, Error};
use crate::registry::{QueryRunner, Registry};
use crate::transport::Service;

pub(super) struct MediatorService {
    pub(super) mediator: std::sync::Weak<Shared>,
}

/// Requests this node's mediator serves at once; more are refused at once
/// ("busy"). Mediator requests share each connection's in-flight limit with
/// Raft's messages: bounding them (and each one's time, below) keeps hung
/// or slow handlers from starving replication.
pub(crate) const MAX_SERVING: u64 = 64;

impl Service for MediatorService {
    fn call(&self, _from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let req: Request = match decode(&body) {
            Ok(r) => r,
            Err(e) => return futures::future::ready(Err(format!("bad request: {e}"))).boxed(),
        };
        let Some(med) = self.mediator.upgrade().map(Mediator) else {
            return futures::future::ready(Err("node is shut down".to_string())).boxed();
        };
        if !matches!(req, Request::Ping) && med.load() >= MAX_SERVING {
            let busy = Failure::Unavailable(format!("busy: {MAX_SERVING} requests in progress"));
            let reply = match req {
                Request::Event { .. } => Reply::Delivered(Err(busy)),
                _ => Reply::Answer(Err(busy)),
            };
            return futures::future::ready(encode(&reply).map(Bytes::from)).boxed();
        }
        // no answer can be useful after the caller's deadline (its request
        // timeout, the same setting on every node as a rule)
        let limit = med.0.request_timeout;
        async move {
            let reply = match req {
                Request::Ping => Reply::Pong {
                    load: med.load(),
                    metadata: med.metadata(),
                    api_addr: med.api_addr(),
                },
                Request::Query {
                    name,
                    payload,
                    linearizable,
                } => {
                    let _busy = med.busy();
                    let run = run_query(&med, &name, &payload, linearizable);
                    Reply::Answer(match tokio::time::timeout(limit, run).await {
                        Ok(r) => r.map(serde_bytes::ByteBuf::from),
                        Err(_) => Err(Failure::Unavailable(format!(
                            "the query did not finish within {limit:?}"
                        ))),
                    })
                }
                Request::Event { name, payload } => {
                    let _busy = med.busy();
                    let run = run_event(med.id(), &name, &payload);
                    Reply::Delivered(match tokio::time::timeout(limit, run).await {
                        Ok(r) => r,
                        Err(_) => Err(Failure::Unavailable(format!(
                            "the handlers did not finish within {limit:?}"
                        ))),
                    })
                }
            };
            encode(&reply).map(Bytes::from)
        }
        .boxed()
    }
}

fn failure(e: Error) -> Failure {
    match e {
        Error::Apply(a) => Failure::Apply(a),
        other => Failure::Unavailable(other.to_string()),
    }
}

fn panicked(handler: &str, p: Box<dyn std::any::Any + Send>) -> Failure {
    let message = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Failure::Apply(ApplyError::Panicked {
        handler: handler.to_string(),
        message,
    })
}

/// Runs the query named `name` here, as `node.query` would (a node that
/// stopped or that its peers refuse answers no reads), and encodes its
/// answer.
async fn run_query(
    med: &Mediator,
    name: &str,
    payload: &[u8],
    linearizable: bool,
) -> Result<Vec<u8>, Failure> {
    let reg = Registry::global().map_err(failure)?;
    let Some(entry) = reg.queries.get(name) else {
        return Err(Failure::Apply(ApplyError::UnknownMessage {
            name: name.to_string(),
        }));
    };
    let raft = &med.0.raft;
    if entry.state.is_some() {
        raft.readable().map_err(failure)?;
    }
    if linearizable {
        raft.read_barrier(med.0.request_timeout)
            .await
            .map_err(failure)?;
    }
    match entry.run {
        QueryRunner::Stateful(run) => {
            let Some(state) = entry.state else {
                return Err(Failure::Unavailable(format!("query `{name}` has no state")));
            };
            let info = state();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                raft.read(|m| m.state_any(info).map(|s| run(payload, s)))
            }));
            match r {
                Ok(Some(out)) => out.map_err(Failure::Apply),
                Ok(None) => Err(failure(Error::UnknownState(info.type_name))),
                Err(p) => Err(panicked(entry.handler, p)),
            }
        }
        QueryRunner::Stateless(run) => {
            let fut = match std::panic::catch_unwind(|| run(payload)) {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Err(Failure::Apply(e)),
                Err(p) => return Err(panicked(entry.handler, p)),
            };
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => out.map_err(Failure::Apply),
                Err(p) => Err(panicked(entry.handler, p)),
            }
        }
    }
}

/// Runs this node's handlers of the event named `name`, one after the
/// other; the count of handlers that ran, or the first failure.
pub(super) async fn run_event(node_id: u64, name: &str, payload: &[u8]) -> Result<u32, Failure> {
    let reg = Registry::global().map_err(failure)?;
    if !reg.applies(name, true) {
        return Err(Failure::Apply(ApplyError::UnknownMessage {
            name: name.to_string(),
        }));
    }
    let mut ran = 0u32;
    let mut first_error = None;
    for entry in reg.events.get(name).map(Vec::as_slice).unwrap_or_default() {
        let ctx = EventContext {
            node_id,
            log_index: 0,
        };
        let fut = match std::panic::catch_unwind(|| (entry.call)(payload, ctx)) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                first_error.get_or_insert(Failure::Apply(e));
                continue;
            }
            Err(p) => {
                first_error.get_or_insert(panicked(entry.handler, p));
                continue;
            }
        };
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(()) => ran += 1,
            Err(p) => {
                first_error.get_or_insert(panicked(entry.handler, p));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(ran),
    }
}

/// Counts a request being served while it lives.
pub(crate) struct Busy<'a>(pub(crate) &'a std::sync::atomic::AtomicU64);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
