//! Forwarding writes from a follower to the leader, coalesced: the writes
//! queued at the moment a batch leaves go to the leader in one RPC, and
//! several batches may be in flight at once (pipelining).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::wire::{Redirect, Rpc, decode, encode};
use crate::machine::{Applied, Envelope};
use crate::transport::Pool;

/// The most writes in one forwarded batch.
const MAX_BATCH: usize = 512;
/// The most batches in flight to the leader at once.
const MAX_IN_FLIGHT: usize = 4;

type Reply = Redirect<Applied>;

struct Pending {
    leader: u64,
    addr: String,
    env: Envelope,
    ttl: Duration,
    reply: oneshot::Sender<Reply>,
}

/// The follower side: queue a write, get the leader's answer.
#[derive(Clone)]
pub(crate) struct Forwarder {
    tx: mpsc::Sender<Pending>,
}

impl Forwarder {
    /// Starts the batching task; it ends when every `Forwarder` is dropped
    /// or `stop` fires.
    pub(crate) fn start(pool: Pool, tasks: &mut JoinSet<()>) -> Forwarder {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tasks.spawn(run(pool, rx));
        Forwarder { tx }
    }

    /// Sends `env` to `leader` in the next batch and waits for its answer.
    pub(crate) async fn write(
        &self,
        leader: u64,
        addr: String,
        env: Envelope,
        ttl: Duration,
    ) -> Reply {
        let (reply, rx) = oneshot::channel();
        let p = Pending {
            leader,
            addr,
            env,
            ttl,
            reply,
        };
        if self.tx.send(p).await.is_err() {
            return Redirect::Unknown("the node is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| Redirect::Unknown("the forwarder stopped".into()))
    }
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before draining: while every slot is busy,
        // writes pile up here and leave together (bigger batches under load,
        // no waiting at all when idle).
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // one batch per leader address (normally there is one)
        let mut permit = Some(permit);
        while !batch.is_empty() {
            let (leader, addr) = (batch[0].leader, batch[0].addr.clone());
            let (group, rest): (Vec<Pending>, Vec<Pending>) = batch
                .into_iter()
                .partition(|p| p.leader == leader && p.addr == addr);
            batch = rest;
            let permit = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let pool = pool.clone();
            in_flight.spawn(async move {
                send_batch(&pool, leader, &addr, group).await;
                drop(permit);
            });
            while in_flight.try_join_next().is_some() {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_batch(pool: &Pool, leader: u64, addr: &str, group: Vec<Pending>) {
    let ttl = group
        .iter()
        .map(|p| p.ttl)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let (envs, replies): (Vec<Envelope>, Vec<oneshot::Sender<Reply>>) =
        group.into_iter().map(|p| (p.env, p.reply)).unzip();
    let n = envs.len();
    let outcome: Result<Vec<Reply>, String> = match encode(&Rpc::WriteMany(envs)) {
        Err(e) => Err(e),
        Ok(body) => match pool.call(leader, addr, body, ttl).await {
            Err(e) => Err(format!("leader {leader}: {e}")),
            Ok(bytes) => match decode::<Vec<Reply>>(&bytes) {
                Ok(v) if v.len() == n => Ok(v),
                Ok(v) => Err(format!(
                    "leader {leader} answered {} of {n} writes",
                    v.len()
                )),
                Err(e) => Err(format!("bad reply from {leader}: {e}")),
            },
        },
    };
    match outcome {
        Ok(answers) => {
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(a);
            }
        }
        Err(e) => {
            for r in replies {
                let _ = r.send(Redirect::Unknown(e.clone()));
            }
        }
    }
}
