//! The heartbeat service: registers a node and keeps its lease alive, with
//! one call.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::view::{Backoff, LogLimiter};
use super::{Discovery, DiscoveryError, NodeInfo};

/// Heartbeats a registered node every
/// [`heartbeat_interval`](super::DiscoveryConfig::heartbeat_interval) with
/// the load a closure reports.
///
/// While the store is down it keeps retrying with backoff (logging a line
/// every few seconds, not per attempt); the backend re-registers the node if
/// the store forgot it. A duplicate id stops the service with an error log;
/// [`shutdown`](Self::shutdown) returns that error.
///
/// [`shutdown`](Self::shutdown) unregisters (a graceful leave). Dropping the
/// service only stops the heartbeats: the others see the node expire, as
/// after a crash.
#[derive(Debug)]
pub struct HeartbeatService {
    discovery: Arc<dyn Discovery>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), DiscoveryError>>>,
}

impl HeartbeatService {
    /// Registers `info` (failing if the store is unreachable or the id is
    /// taken), then heartbeats with `load()` until shut down or dropped.
    pub async fn start<L>(
        discovery: Arc<dyn Discovery>,
        info: NodeInfo,
        load: L,
    ) -> Result<HeartbeatService, DiscoveryError>
    where
        L: Fn() -> f64 + Send + Sync + 'static,
    {
        discovery.register(info).await?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(discovery.clone(), cancel.clone(), load));
        Ok(HeartbeatService {
            discovery,
            cancel,
            task: Some(task),
        })
    }

    /// Whether the heartbeats stopped by themselves (a duplicate id).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops heartbeating and unregisters. Returns the error that stopped
    /// the service early, if any, or the unregister's error.
    pub async fn shutdown(mut self) -> Result<(), DiscoveryError> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Err(err)) => return Err(err),
                Ok(Ok(())) => {}
                Err(join) => tracing::error!(error = %join, "discovery: heartbeat task failed"),
            }
        }
        self.discovery.unregister().await
    }
}

impl Drop for HeartbeatService {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run<L>(
    discovery: Arc<dyn Discovery>,
    cancel: CancellationToken,
    load: L,
) -> Result<(), DiscoveryError>
where
    L: Fn() -> f64 + Send + Sync + 'static,
{
    let config = discovery.config().clone();
    let mut backoff = Backoff::new(
        config.heartbeat_interval,
        config.lease.max(Duration::from_secs(1)),
    );
    let mut limiter = LogLimiter::new(Duration::from_secs(5));
    let mut failing = false;
    let mut delay = config.heartbeat_interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        match discovery.heartbeat(load()).await {
            Ok(()) => {
                if failing {
                    tracing::info!("discovery: heartbeats succeed again");
                }
                failing = false;
                limiter.reset();
                backoff.reset();
                delay = config.heartbeat_interval;
            }
            Err(err) if err.is_transient() => {
                failing = true;
                delay = backoff.next_delay();
                if let Some(suppressed) = limiter.allow() {
                    tracing::warn!(error = %err, source = ?std::error::Error::source(&err),
                        suppressed, retry_in = ?delay, "discovery: heartbeat failed");
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "discovery: heartbeats stopped");
                return Err(err);
            }
        }
    }
}
