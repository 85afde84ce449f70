//! The Redis backend: leases timed by the server's clock, changes on a
//! stream, an idempotent reaper.
//!
//! # Layout (prefix `P`, by default `catga:{<cluster>}`)
//!
//! * `P:members`: a sorted set, node id → lease expiry in ms of the
//!   **server's** clock (`TIME` inside the scripts; client clocks never
//!   matter);
//! * `P:node:<id>`: a hash with the node's `inc` (incarnation) and `info`
//!   (its [`NodeInfo`] as JSON);
//! * `P:rec:<name>`: the cluster's records (see
//!   [`Discovery::create_record`]), created with `SET NX`, never expiring;
//! * `P:events`: a stream (`XADD … MAXLEN ~`) of `joined` / `updated` /
//!   `left` entries, written by the same scripts that change the two above,
//!   so the stream and the state never disagree.
//!
//! Register, heartbeat, unregister and reap are Lua scripts, each atomic. A
//! heartbeat is one `EVALSHA` (one write). Every [`RedisDiscovery`] and every
//! watch runs the reaper every `reap_interval`: it removes expired leases and writes their
//! `left` entry; whichever process reaps first writes it, once.
//!
//! A watch takes an atomic snapshot (members + the stream's last id), then
//! `XREAD BLOCK`s on a dedicated connection. After a lost connection it
//! resumes from its last id; if the stream was trimmed past it (or the store
//! lost its data) it takes a new snapshot and reports the difference.
//! Keyspace notifications are not used.
//!
//! The store must be reachable when [`RedisDiscovery::connect`] runs (the
//! error names the URL); later outages are retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

use super::redis_scripts::Scripts;
use super::view::{Backoff, LogLimiter, MemberWatch};
use super::{BoxFuture, Discovery, DiscoveryConfig, DiscoveryError, NodeInfo};

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The key prefix; `catga:{<cluster>}` when `None` (the braces keep all
    /// of a cluster's keys in one Redis Cluster slot).
    pub prefix: Option<String>,
    /// The approximate length the event stream is trimmed to (default 10 000).
    pub stream_maxlen: usize,
    /// How often this process runs the reaper (default: half the heartbeat
    /// interval).
    pub reap_interval: Option<Duration>,
    /// How long `connect` waits for the server (default 3 s).
    pub connect_timeout: Duration,
}

impl RedisOptions {
    /// Options for the server at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: None,
            stream_maxlen: 10_000,
            reap_interval: None,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Discovery on Redis 7. See the [module docs](self).
#[derive(Debug)]
pub struct RedisDiscovery {
    pub(super) shared: Arc<Shared>,
    reaper: JoinHandle<()>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: DiscoveryConfig,
    pub(super) url: String,
    pub(super) client: Client,
    pub(super) conn: ConnectionManager,
    pub(super) keys: Keys,
    pub(super) scripts: Scripts,
    maxlen: usize,
    reap_interval: Duration,
    /// Serialises register / heartbeat / unregister of this process.
    op: tokio::sync::Mutex<()>,
    me: Mutex<Option<NodeInfo>>,
}

#[derive(Debug)]
pub(super) struct Keys {
    pub(super) prefix: String,
    pub(super) members: String,
    pub(super) events: String,
    pub(super) node_prefix: String,
}

impl Keys {
    pub(super) fn node(&self, id: u64) -> String {
        format!("{}{id}", self.node_prefix)
    }
}

impl RedisDiscovery {
    /// Connects to Redis and starts this process's reaper. Fails with
    /// [`DiscoveryError::Unreachable`] (naming the URL) if the server does
    /// not answer within `connect_timeout`.
    pub async fn connect(
        options: RedisOptions,
        config: DiscoveryConfig,
    ) -> Result<RedisDiscovery, DiscoveryError> {
        config.validate()?;
        if options.stream_maxlen == 0 {
            return Err(DiscoveryError::InvalidConfig(
                "stream_maxlen must be at least 1".into(),
            ));
        }
        let unreachable = |source: super::BoxError| DiscoveryError::Unreachable {
            url: options.url.clone(),
            source,
        };
        let client = Client::open(options.url.as_str()).map_err(|e| unreachable(e.into()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            options.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|e| unreachable(e.into()))?
        .map_err(|e| unreachable(e.into()))?;
        let prefix = options
            .prefix
            .clone()
            .unwrap_or_else(|| format!("catga:{{{}}}", config.cluster));
        let keys = Keys {
            members: format!("{prefix}:members"),
            events: format!("{prefix}:events"),
            node_prefix: format!("{prefix}:node:"),
            prefix,
        };
        let reap_interval = options
            .reap_interval
            .unwrap_or(config.heartbeat_interval / 2);
        let shared = Arc::new(Shared {
            config,
            url: options.url,
            client,
            conn,
            keys,
            scripts: Scripts::new(),
            maxlen: options.stream_maxlen,
            reap_interval,
            op: tokio::sync::Mutex::new(()),
            me: Mutex::new(None),
        });
        let reaper = tokio::spawn(reap_loop(shared.clone(), reap_interval));
        Ok(RedisDiscovery { shared, reaper })
    }

    /// The key prefix in use (see the module docs for the layout).
    pub fn key_prefix(&self) -> &str {
        &self.shared.keys.prefix
    }

    /// Runs the reaper once; returns how many expired nodes it removed.
    pub async fn reap(&self) -> Result<u64, DiscoveryError> {
        reap_once(&self.shared).await
    }
}

impl Drop for RedisDiscovery {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

enum Reply {
    Ok,
    Gone,
    Duplicate { holder: u64, retry_after: Duration },
}

fn parse_reply(op: &'static str, reply: &str) -> Result<Reply, DiscoveryError> {
    let protocol = || DiscoveryError::Protocol {
        op,
        reply: reply.chars().take(80).collect(),
    };
    match reply {
        "ok" => Ok(Reply::Ok),
        "gone" => Ok(Reply::Gone),
        _ => {
            let mut parts = reply.strip_prefix("dup:").ok_or_else(protocol)?.split(':');
            let holder = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(protocol)?;
            let ms: f64 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(protocol)?;
            Ok(Reply::Duplicate {
                holder,
                retry_after: Duration::from_millis(ms.max(0.0) as u64),
            })
        }
    }
}

impl Shared {
    fn duplicate(&self, info: &NodeInfo, holder: u64, retry_after: Duration) -> DiscoveryError {
        let err = DiscoveryError::DuplicateId {
            id: info.id,
            cluster: self.config.cluster.clone(),
            holder,
            ours: info.incarnation,
            retry_after,
        };
        tracing::error!(error = %err, "discovery: duplicate node id refused");
        err
    }

    async fn register(&self, info: NodeInfo) -> Result<(), DiscoveryError> {
        let _op = self.op.lock().await;
        self.register_locked(info).await
    }

    async fn register_locked(&self, info: NodeInfo) -> Result<(), DiscoveryError> {
        self.config.check_info(&info)?;
        let json = String::from_utf8(info.encode()?).map_err(|e| DiscoveryError::Protocol {
            op: "register",
            reply: e.to_string(),
        })?;
        let reply: String = self
            .scripts
            .register
            .key(&self.keys.members)
            .key(self.keys.node(info.id))
            .key(&self.keys.events)
            .arg(info.id)
            .arg(info.incarnation)
            .arg(json)
            .arg(self.config.lease.as_millis() as u64)
            .arg(self.maxlen)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| DiscoveryError::store("register", e))?;
        match parse_reply("register", &reply)? {
            Reply::Ok | Reply::Gone => {
                *self.me.lock() = Some(info);
                Ok(())
            }
            Reply::Duplicate {
                holder,
                retry_after,
            } => Err(self.duplicate(&info, holder, retry_after)),
        }
    }

    async fn heartbeat(&self, load: f64) -> Result<(), DiscoveryError> {
        let _op = self.op.lock().await;
        let published = self
            .me
            .lock()
            .clone()
            .ok_or(DiscoveryError::NotRegistered)?;
        let mut next = published.clone();
        next.load = load;
        let changed = published.differs_significantly(&next, self.config.load_change_threshold);
        let info_arg = if changed {
            String::from_utf8_lossy(&next.encode()?).into_owned()
        } else {
            String::new()
        };
        let reply: String = self
            .scripts
            .heartbeat
            .key(&self.keys.members)
            .key(self.keys.node(next.id))
            .key(&self.keys.events)
            .arg(next.id)
            .arg(next.incarnation)
            .arg(self.config.lease.as_millis() as u64)
            .arg(self.maxlen)
            .arg(info_arg)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| DiscoveryError::store("heartbeat", e))?;
        match parse_reply("heartbeat", &reply)? {
            Reply::Ok => {
                if changed {
                    *self.me.lock() = Some(next);
                }
                Ok(())
            }
            Reply::Gone => {
                tracing::info!(
                    id = next.id,
                    "discovery: the store forgot this node; re-registering"
                );
                self.register_locked(next).await
            }
            Reply::Duplicate {
                holder,
                retry_after,
            } => Err(self.duplicate(&next, holder, retry_after)),
        }
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        let _op = self.op.lock().await;
        let Some(me) = self.me.lock().clone() else {
            return Ok(());
        };
        let removed: i64 = self
            .scripts
            .unregister
            .key(&self.keys.members)
            .key(self.keys.node(me.id))
            .key(&self.keys.events)
            .arg(me.id)
            .arg(me.incarnation)
            .arg(self.maxlen)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| DiscoveryError::store("unregister", e))?;
        if removed == 0 {
            tracing::warn!(
                id = me.id,
                "discovery: unregister found no entry of ours (expired or taken)"
            );
        }
        *self.me.lock() = None;
        Ok(())
    }

    /// The stream's last id and the stored members (malformed ones skipped).
    pub(super) async fn snapshot(&self) -> Result<(String, Vec<NodeInfo>), DiscoveryError> {
        let reply: Vec<Vec<u8>> = self
            .scripts
            .snapshot
            .key(&self.keys.members)
            .key(&self.keys.events)
            .arg(&self.keys.node_prefix)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| DiscoveryError::store("snapshot", e))?;
        let mut parts = reply.into_iter();
        let last = parts
            .next()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| DiscoveryError::Protocol {
                op: "snapshot",
                reply: "no stream id".into(),
            })?;
        let members = parts
            .filter_map(|bytes| NodeInfo::decode(&bytes, &self.config.cluster, &self.keys.members))
            .collect();
        Ok((last, members))
    }
}

async fn reap_once(shared: &Shared) -> Result<u64, DiscoveryError> {
    let reaped: u64 = shared
        .scripts
        .reap
        .key(&shared.keys.members)
        .key(&shared.keys.events)
        .arg(&shared.keys.node_prefix)
        .arg(shared.maxlen)
        .arg(100)
        .invoke_async(&mut shared.conn.clone())
        .await
        .map_err(|e| DiscoveryError::store("reap", e))?;
    if reaped > 0 {
        tracing::info!(reaped, "discovery: reaped expired leases");
    }
    Ok(reaped)
}

async fn reap_loop(shared: Arc<Shared>, interval: Duration) {
    let mut limiter = LogLimiter::new(Duration::from_secs(5));
    let mut backoff = Backoff::new(interval, Duration::from_secs(2).max(interval));
    let mut delay = interval;
    loop {
        tokio::time::sleep(delay).await;
        match reap_once(&shared).await {
            Ok(_) => {
                limiter.reset();
                backoff.reset();
                delay = interval;
            }
            Err(err) => {
                delay = backoff.next_delay();
                if let Some(suppressed) = limiter.allow() {
                    tracing::warn!(url = %shared.url, error = %err,
                        source = ?std::error::Error::source(&err), suppressed,
                        "discovery: reaper cannot reach redis");
                }
            }
        }
    }
}

impl Discovery for RedisDiscovery {
    fn config(&self) -> &DiscoveryConfig {
        &self.shared.config
    }

    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(self.shared.register(info))
    }

    fn heartbeat(&self, load: f64) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(self.shared.heartbeat(load))
    }

    fn unregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(self.shared.unregister())
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DiscoveryError>> {
        Box::pin(async move { Ok(self.shared.snapshot().await?.1) })
    }

    fn create_record<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, DiscoveryError>> {
        Box::pin(async move {
            super::check_record_name(name)?;
            let key = format!("{}:rec:{name}", self.shared.keys.prefix);
            let mut conn = self.shared.conn.clone();
            let created: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(|e| DiscoveryError::store("create record", e))?;
            if created.is_some() {
                return Ok(value.to_string());
            }
            let held: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| DiscoveryError::store("read record", e))?;
            held.ok_or_else(|| DiscoveryError::Protocol {
                op: "create record",
                reply: format!("{key} exists for SET NX but not for GET"),
            })
        })
    }

    fn read_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DiscoveryError>> {
        Box::pin(async move {
            super::check_record_name(name)?;
            let key = format!("{}:rec:{name}", self.shared.keys.prefix);
            redis::cmd("GET")
                .arg(&key)
                .query_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| DiscoveryError::store("read record", e))
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<MemberWatch, DiscoveryError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            // The first snapshot is taken here, so that a store that is down
            // fails the call instead of an empty watch.
            let first = shared.snapshot().await?;
            // A watcher reaps too: its Lefts must not depend on another
            // process being alive to reap.
            Ok(MemberWatch::spawn(move |emitter, resyncs| async move {
                tokio::select! {
                    _ = super::redis_watch::run(shared.clone(), first, emitter, resyncs) => {}
                    _ = reap_loop(shared.clone(), shared.reap_interval) => {}
                }
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_parse() {
        assert!(matches!(parse_reply("t", "ok"), Ok(Reply::Ok)));
        assert!(matches!(parse_reply("t", "gone"), Ok(Reply::Gone)));
        assert!(matches!(
            parse_reply("t", "dup:42:1500"),
            Ok(Reply::Duplicate { holder: 42, retry_after }) if retry_after == Duration::from_millis(1500)
        ));
        assert!(parse_reply("t", "dup:x").is_err());
        assert!(parse_reply("t", "what").is_err());
    }
}
