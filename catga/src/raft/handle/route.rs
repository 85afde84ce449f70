//! The client side of routing, for the node's API: writes, read indexes,
//! membership changes and quarantines go to the leader (or run here when
//! this node leads), retried through leader changes until their timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::super::wire::{Redirect, Rpc, decode, encode};
use super::super::{Raft, leader};
use super::RaftHandle;
use crate::error::{Error, Result, TimeoutReason};
use crate::machine::{Applied, Envelope};

/// The longest a single attempt (one RPC to the leader, or one local
/// proposal) may take before the call retries.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl RaftHandle {
    fn leader(&self) -> Option<(u64, Option<String>)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let l = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.addr.clone());
        Some((l, addr))
    }

    /// Sends `rpc` to the leader (or runs `local` when this node leads),
    /// retrying through leader changes until `timeout`, in attempts of up
    /// to `attempt` each ([`ATTEMPT_TIMEOUT`] for all but `add_node`).
    /// `refused` makes
    /// the error of a definite refusal by the leader (it differs per call:
    /// a membership change, a quarantine, a write).
    async fn route<T, L, F, R, G>(
        &self,
        timeout: Duration,
        attempt: Duration,
        refused: fn(String) -> Error,
        remote: R,
        local: L,
    ) -> Result<T>
    where
        L: Fn(Raft) -> F,
        F: Future<Output = Redirect<T>>,
        R: Fn(u64, String, Duration) -> G,
        G: Future<Output = Redirect<T>>,
    {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = Duration::from_millis(1);
        // until a leader is known, that is why the call waits
        let mut last = TimeoutReason::NoLeader;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: timeout,
                    reason: last,
                });
            }
            if let Some(e) = self.failure() {
                return Err(Error::Raft(format!(
                    "this node stopped ({e}); restart it: it recovers from its data dir"
                )));
            }
            // One attempt never takes the whole budget: a leader that was cut
            // off must not hold the call until its deadline.
            let remaining = (deadline - now).min(attempt);
            let outcome = match self.leader() {
                None => None,
                Some((l, _)) if l == self.id => {
                    match tokio::time::timeout(remaining, local(self.raft.clone())).await {
                        Ok(r) => Some(r),
                        Err(_) => Some(Redirect::Unknown(
                            "the leader did not commit in time".into(),
                        )),
                    }
                }
                Some((l, Some(addr))) => {
                    // A leader that stalls (SIGSTOP, a long pause) holds the
                    // attempt until its deadline; once this node knows a new
                    // leader, resend there at once (same client id and
                    // sequence: the dedup table makes the resend safe).
                    tokio::select! {
                        r = remote(l, addr, remaining) => Some(r),
                        n = self.leader_moved_from(l) => Some(Redirect::Unknown(format!(
                            "leader changed from {l} to {n} while waiting for it"
                        ))),
                    }
                }
                Some((l, None)) => Some(Redirect::Unknown(format!("no address for leader {l}"))),
            };
            match outcome {
                Some(Redirect::Ok(v)) => return Ok(v),
                Some(Redirect::Failed(e)) => return Err(refused(e)),
                Some(Redirect::NotUpgraded { name, nodes }) => {
                    return Err(Error::NotUpgraded { name, nodes });
                }
                Some(Redirect::NotLeader(_)) => {
                    last = TimeoutReason::Leader {
                        last: "the leader changed".into(),
                    }
                }
                Some(Redirect::Unknown(e)) => last = TimeoutReason::Leader { last: e },
                None => {}
            }
            if self.raft.metrics().borrow_watched().running_state.is_err() {
                return Err(match self.failure() {
                    Some(e) => Error::Raft(format!(
                        "this node stopped ({e}); restart it: it recovers from its data dir"
                    )),
                    None => Error::ShutDown,
                });
            }
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            self.wait_change(wait).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Resolves once this node knows a leader other than `l`.
    async fn leader_moved_from(&self, l: u64) -> u64 {
        // the server metrics: they change with the leader, not with every
        // write's progress (every forwarded write in flight waits here)
        let mut rx = self.raft.server_metrics();
        loop {
            let now = rx.borrow_watched().current_leader;
            if let Some(n) = now.filter(|n| *n != l) {
                return n;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// One RPC to the leader.
    async fn call_leader<T: DeserializeOwned>(
        &self,
        l: u64,
        addr: String,
        rpc: Rpc,
        ttl: Duration,
    ) -> Redirect<T> {
        let body = match encode(&rpc) {
            Ok(b) => b,
            Err(e) => return Redirect::Failed(e),
        };
        match self.pool.call(l, &addr, body, ttl).await {
            Ok(bytes) => match decode::<Redirect<T>>(&bytes) {
                Ok(r) => r,
                Err(e) => Redirect::Unknown(format!("bad reply from {l}: {e}")),
            },
            Err(e) => Redirect::Unknown(format!("leader {l}: {e}")),
        }
    }

    /// Replicates `env` through the leader; retried (with the same client id
    /// and sequence number, so it applies once) until `timeout`.
    ///
    /// Returns once this node has applied the entry too (read your writes:
    /// a local query here after the write sees it), or when `timeout` has
    /// passed since the call if this node lags: the write is committed
    /// either way, so it is never reported as failed.
    ///
    /// `admitted`: when the caller's `send` began, if probing (see
    /// `crate::probe`).
    pub(crate) async fn write(
        &self,
        env: Envelope,
        timeout: Duration,
        admitted: Option<std::time::Instant>,
    ) -> Result<Applied> {
        let deadline = Instant::now() + timeout;
        let applied = self.write_at_leader(env, timeout, admitted).await?;
        let t = crate::probe::start();
        self.wait_applied_until(applied.index, deadline).await;
        crate::probe::since(crate::probe::Stage::ReadYourWrites, t);
        Ok(applied)
    }

    /// Waits until this node has applied `index` (0: nothing to wait for),
    /// `deadline` passes, or the node stops.
    async fn wait_applied_until(&self, index: u64, deadline: Instant) {
        let mut rx = self.sm.shared.applied.subscribe();
        if *rx.borrow() >= index {
            return;
        }
        let stopped = super::core_ended(&self.raft);
        tokio::select! {
            _ = rx.wait_for(|a| *a >= index) => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(index, "a write is committed but this node has not applied it yet");
            }
            _ = stopped => {}
        }
    }

    async fn write_at_leader(
        &self,
        env: Envelope,
        timeout: Duration,
        admitted: Option<std::time::Instant>,
    ) -> Result<Applied> {
        self.route(
            timeout,
            ATTEMPT_TIMEOUT,
            // `client_write` refuses only to forward (handled); anything
            // else is the leader's Raft failing
            |e| Error::Raft(format!("the leader could not take the write: {e}")),
            |l, addr, ttl| {
                self.counters
                    .writes_forwarded
                    .fetch_add(1, Ordering::Relaxed);
                self.forwarder.write(l, addr, env.clone(), ttl)
            },
            |raft| {
                self.counters.writes_local.fetch_add(1, Ordering::Relaxed);
                let env = env.clone();
                let compat = self.compat.clone();
                let sm = self.sm.clone();
                async move {
                    let r = leader::write(&raft, &compat, env, admitted).await;
                    if crate::probe::on()
                        && let Some(at) = *sm.shared.answered_at.lock()
                    {
                        crate::probe::record(crate::probe::Stage::AnswerBack, at.elapsed());
                    }
                    r
                }
            },
        )
        .await
    }

    /// Waits until this node has applied every entry committed before the
    /// call (a read index from the leader).
    pub(crate) async fn read_barrier(&self, timeout: Duration) -> Result<()> {
        let read_id = self
            .route(
                timeout,
                ATTEMPT_TIMEOUT,
                |e| Error::Raft(format!("the leader could not serve a read index: {e}")),
                |l, addr, ttl| self.call_leader(l, addr, Rpc::ReadIndex, ttl),
                |raft| async move { leader::read_index(&raft).await },
            )
            .await;
        let read_id = read_id?;
        let mut applied = self.sm.shared.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|a| *a >= read_id.index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) => Err(Error::Timeout {
                waited: timeout,
                reason: TimeoutReason::Applied {
                    index: read_id.index,
                },
            }),
        }
    }

    pub(crate) async fn add_node(&self, id: u64, addr: String, timeout: Duration) -> Result<()> {
        // one attempt lasts as long as the new node progresses (the
        // leader gives up on one that does not)
        self.route(
            timeout,
            timeout,
            Error::Membership,
            |l, a, ttl| {
                self.call_leader(
                    l,
                    a,
                    Rpc::AddNode {
                        id,
                        addr: addr.clone(),
                    },
                    ttl,
                )
            },
            |raft| {
                let addr = addr.clone();
                let peers = self.peers.clone();
                let voters = self.voters;
                async move { leader::add_node(&raft, &peers, id, addr, voters).await }
            },
        )
        .await
    }

    pub(crate) async fn remove_node(&self, id: u64, timeout: Duration) -> Result<()> {
        self.route(
            timeout,
            ATTEMPT_TIMEOUT,
            Error::Membership,
            |l, a, ttl| self.call_leader(l, a, Rpc::RemoveNode { id }, ttl),
            |raft| async move { leader::remove_node(&raft, id, self.voters).await },
        )
        .await
    }

    /// Quarantines log entry `index`, which every member stops before
    /// (`raft/poison.rs`): the leader asks each for its promise, then
    /// commits the decision.
    pub(crate) async fn skip_poisoned(&self, index: u64, timeout: Duration) -> Result<()> {
        let sm = self.sm.clone();
        let id = self.id;
        self.route(
            timeout,
            ATTEMPT_TIMEOUT,
            Error::Quarantine,
            |l, a, ttl| self.call_leader(l, a, Rpc::Quarantine { index }, ttl),
            |raft| {
                let sm = sm.clone();
                async move { super::super::poison::propose(id, &raft, &sm, index).await }
            },
        )
        .await
    }
}

pub(super) fn redirect_result(r: Redirect<()>) -> Result<()> {
    match r {
        Redirect::Ok(()) => Ok(()),
        // the leader's own call: no longer the leader, it changes nothing
        Redirect::NotLeader(l) => Err(Error::NotNow(format!(
            "this node is no longer the leader (the leader is {l:?}); the change is made by the \
             leader: call it there"
        ))),
        // no answer from its own Raft: the change may still commit
        Redirect::Unknown(e) => Err(Error::Raft(format!(
            "the membership change may or may not take effect ({e}); read the membership, then \
             retry"
        ))),
        Redirect::Failed(e) => Err(Error::Membership(e)),
        Redirect::NotUpgraded { name, nodes } => Err(Error::NotUpgraded { name, nodes }),
    }
}
