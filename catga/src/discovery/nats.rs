//! The NATS backend: JetStream KV, written for nats-server 2.9.
//!
//! One bucket (default `catga_discovery`, history 1), one key per node:
//! `<cluster>.<id>`, whose value is the node's [`NodeInfo`] as JSON.
//!
//! * A heartbeat is a compare-and-set update of the node's key on the
//!   revision it last wrote (one write). A revision mismatch whose value
//!   carries another incarnation means a second process runs with our id:
//!   it is refused loudly ([`DiscoveryError::DuplicateId`]).
//! * On 2.9 a key removed by the bucket's `max_age` produces no watch event
//!   and per-key TTLs need 2.11, so liveness is judged by the **watcher**: it
//!   keeps, per node, the time it last saw a new revision (its own monotonic
//!   clock) and reports `Left { Expired }` once a lease passes without one.
//!   `max_age` (default ten leases, at least a minute) only cleans up keys
//!   of nodes that died.
//! * Entries replayed when a watch starts count as alive only if the server
//!   stamped them less than a lease ago (this compares the server's
//!   timestamp with the local clock: keep clocks within a lease, e.g. NTP).
//! * A watchdog polls the client's connection count; after any reconnect
//!   (a server restart), the watch is re-created: its replay of the current
//!   values is diffed against what the watcher knows (new revisions refresh,
//!   deletions are `Left { Graceful }`), and nodes that do not heartbeat
//!   within a lease of the reconnection are reported `Left { Expired }`.
//!
//! The cluster's records ([`Discovery::create_record`]) live in a second
//! bucket, `<bucket>_records` (no `max_age`: they never expire), created on
//! first use, under keys `<cluster>.<name>`.
//!
//! The server must be reachable when [`NatsDiscovery::connect`] runs (the
//! error names the URL); later outages are retried by the client.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use super::view::MemberWatch;
use super::{BoxFuture, Discovery, DiscoveryConfig, DiscoveryError, NodeInfo};

/// Where and how to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port`.
    pub url: String,
    /// The KV bucket (created if missing; default `catga_discovery`).
    pub bucket: String,
    /// The bucket's `max_age` when this process creates it (default: ten
    /// leases, at least 60 s). A backstop only; see the module docs.
    pub max_age: Option<Duration>,
    /// How long `connect` waits for the server (default 3 s).
    pub connect_timeout: Duration,
}

impl NatsOptions {
    /// Options for the server at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            bucket: "catga_discovery".into(),
            max_age: None,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl NatsOptions {
    fn validate(&self, config: &DiscoveryConfig) -> Result<(), DiscoveryError> {
        let bucket_ok = !self.bucket.is_empty()
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !bucket_ok {
            return Err(DiscoveryError::InvalidConfig(format!(
                "NATS bucket name {:?} must be letters, digits, '-' or '_'",
                self.bucket
            )));
        }
        if let Some(max_age) = self.max_age
            && max_age < config.lease.saturating_mul(2)
        {
            return Err(DiscoveryError::InvalidConfig(format!(
                "NATS max_age {max_age:?} must be at least two leases ({:?}), or live \
                 nodes' keys are removed under them",
                config.lease.saturating_mul(2)
            )));
        }
        Ok(())
    }
}

/// Discovery on NATS JetStream KV. See the [module docs](self).
#[derive(Debug)]
pub struct NatsDiscovery {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: DiscoveryConfig,
    pub(super) url: String,
    pub(super) client: async_nats::Client,
    pub(super) kv: kv::Store,
    js: jetstream::Context,
    records_bucket: String,
    records: tokio::sync::OnceCell<kv::Store>,
    /// Serialises register / heartbeat / unregister of this process.
    op: tokio::sync::Mutex<()>,
    me: Mutex<Option<(NodeInfo, u64)>>,
}

impl NatsDiscovery {
    /// Connects and opens (or creates) the bucket. Fails with
    /// [`DiscoveryError::Unreachable`] (naming the URL) if the server does
    /// not answer within `connect_timeout`.
    pub async fn connect(
        options: NatsOptions,
        config: DiscoveryConfig,
    ) -> Result<NatsDiscovery, DiscoveryError> {
        config.validate()?;
        options.validate(&config)?;
        let unreachable = |source: super::BoxError| DiscoveryError::Unreachable {
            url: options.url.clone(),
            source,
        };
        let client = tokio::time::timeout(
            options.connect_timeout,
            async_nats::ConnectOptions::new()
                .connection_timeout(options.connect_timeout)
                .reconnect_delay_callback(|n| Duration::from_millis((50u64 << n.min(5)).min(2000)))
                .connect(options.url.as_str()),
        )
        .await
        .map_err(|e| unreachable(e.into()))?
        .map_err(|e| unreachable(e.into()))?;
        let mut js = jetstream::new(client.clone());
        // A heartbeat that waits longer than this is late anyway; do not let
        // one stuck request (a server restart) hold the next ones back.
        js.set_timeout(
            config
                .heartbeat_interval
                .saturating_mul(2)
                .max(Duration::from_secs(1)),
        );
        let kv = match js.get_key_value(options.bucket.as_str()).await {
            Ok(kv) => kv,
            Err(_) => {
                let max_age = options
                    .max_age
                    .unwrap_or(config.lease.saturating_mul(10).max(Duration::from_secs(60)));
                // The stream a KV bucket is, made by hand: async-nats'
                // `create_key_value` first reads the account info, whose
                // nats-server 2.9 form it cannot parse.
                let stream = jetstream::stream::Config {
                    name: format!("KV_{}", options.bucket),
                    description: Some("catga node discovery".into()),
                    subjects: vec![format!("$KV.{}.>", options.bucket)],
                    max_messages_per_subject: 1,
                    max_messages: -1,
                    max_bytes: -1,
                    max_message_size: -1,
                    max_age,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    duplicate_window: max_age.min(Duration::from_secs(120)),
                    ..Default::default()
                };
                let open = "open the KV bucket (is JetStream on? nats-server -js)";
                js.get_or_create_stream(stream)
                    .await
                    .map_err(|e| DiscoveryError::store(open, e))?;
                js.get_key_value(options.bucket.as_str())
                    .await
                    .map_err(|e| DiscoveryError::store(open, e))?
            }
        };
        Ok(NatsDiscovery {
            shared: Arc::new(Shared {
                config,
                url: options.url,
                client,
                kv,
                js,
                records_bucket: format!("{}_records", options.bucket),
                records: tokio::sync::OnceCell::new(),
                op: tokio::sync::Mutex::new(()),
                me: Mutex::new(None),
            }),
        })
    }
}

/// Whether the server stamped `entry` less than a lease ago.
pub(super) fn fresh(entry: &kv::Entry, lease: Duration) -> bool {
    async_nats::datetime::add_std_duration(entry.created, lease)
        .map(|until| until > async_nats::datetime::now())
        .unwrap_or(true)
}

impl Shared {
    /// The records bucket, opened (or created) on first use.
    async fn records(&self) -> Result<&kv::Store, DiscoveryError> {
        self.records
            .get_or_try_init(|| async {
                if let Ok(kv) = self.js.get_key_value(self.records_bucket.as_str()).await {
                    return Ok(kv);
                }
                let stream = jetstream::stream::Config {
                    name: format!("KV_{}", self.records_bucket),
                    description: Some("catga cluster records".into()),
                    subjects: vec![format!("$KV.{}.>", self.records_bucket)],
                    max_messages_per_subject: 1,
                    max_messages: -1,
                    max_bytes: -1,
                    max_message_size: -1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                let open = "open the records bucket";
                self.js
                    .get_or_create_stream(stream)
                    .await
                    .map_err(|e| DiscoveryError::store(open, e))?;
                self.js
                    .get_key_value(self.records_bucket.as_str())
                    .await
                    .map_err(|e| DiscoveryError::store(open, e))
            })
            .await
    }

    async fn create_record(&self, name: &str, value: &str) -> Result<String, DiscoveryError> {
        super::check_record_name(name)?;
        let kv = self.records().await?;
        let key = format!("{}.{name}", self.config.cluster);
        match kv
            .create(&key, Bytes::copy_from_slice(value.as_bytes()))
            .await
        {
            Ok(_) => Ok(value.to_string()),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => self
                .read_record(name)
                .await?
                .ok_or_else(|| DiscoveryError::store("create record", err)),
            Err(err) => Err(DiscoveryError::store("create record", err)),
        }
    }

    async fn read_record(&self, name: &str) -> Result<Option<String>, DiscoveryError> {
        super::check_record_name(name)?;
        let kv = self.records().await?;
        let key = format!("{}.{name}", self.config.cluster);
        match kv
            .entry(&key)
            .await
            .map_err(|e| DiscoveryError::store("read record", e))?
        {
            Some(e) if e.operation == kv::Operation::Put => String::from_utf8(e.value.to_vec())
                .map(Some)
                .map_err(|e| DiscoveryError::Protocol {
                    op: "read record",
                    reply: e.to_string(),
                }),
            _ => Ok(None),
        }
    }

    fn key(&self, id: u64) -> String {
        format!("{}.{id}", self.config.cluster)
    }

    fn duplicate(&self, info: &NodeInfo, holder: u64) -> DiscoveryError {
        let err = DiscoveryError::DuplicateId {
            id: info.id,
            cluster: self.config.cluster.clone(),
            holder,
            ours: info.incarnation,
            retry_after: self.config.lease,
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
        let key = self.key(info.id);
        let value = Bytes::from(info.encode()?);
        let revision = match self.kv.create(&key, value.clone()).await {
            Ok(revision) => revision,
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self
                    .kv
                    .entry(&key)
                    .await
                    .map_err(|e| DiscoveryError::store("read own key", e))?
                    .ok_or_else(|| DiscoveryError::store("register", err))?;
                if entry.operation == kv::Operation::Put {
                    let theirs = NodeInfo::decode(&entry.value, &self.config.cluster, &key);
                    if let Some(theirs) = theirs
                        && theirs.incarnation != info.incarnation
                        && fresh(&entry, self.config.lease)
                    {
                        return Err(self.duplicate(&info, theirs.incarnation));
                    }
                }
                // Ours, a predecessor whose lease passed, a deleted key, or
                // garbage: take it over, on its revision.
                self.kv
                    .update(&key, value, entry.revision)
                    .await
                    .map_err(|e| DiscoveryError::store("register", e))?
            }
            Err(err) => return Err(DiscoveryError::store("register", err)),
        };
        *self.me.lock() = Some((info, revision));
        Ok(())
    }

    async fn heartbeat(&self, load: f64) -> Result<(), DiscoveryError> {
        let _op = self.op.lock().await;
        let (published, revision) = self
            .me
            .lock()
            .clone()
            .ok_or(DiscoveryError::NotRegistered)?;
        let mut next = published.clone();
        next.load = load;
        // The value only changes when the change is worth an `Updated`.
        if !published.differs_significantly(&next, self.config.load_change_threshold) {
            next = published;
        }
        let key = self.key(next.id);
        let value = Bytes::from(next.encode()?);
        match self.kv.update(&key, value.clone(), revision).await {
            Ok(revision) => {
                *self.me.lock() = Some((next, revision));
                Ok(())
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let entry = self
                    .kv
                    .entry(&key)
                    .await
                    .map_err(|e| DiscoveryError::store("read own key", e))?;
                match entry {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        match NodeInfo::decode(&entry.value, &self.config.cluster, &key) {
                            // Our own earlier write whose reply was lost.
                            Some(theirs) if theirs.incarnation == next.incarnation => {
                                let revision = self
                                    .kv
                                    .update(&key, value, entry.revision)
                                    .await
                                    .map_err(|e| DiscoveryError::store("heartbeat", e))?;
                                *self.me.lock() = Some((next, revision));
                                Ok(())
                            }
                            Some(theirs) => Err(self.duplicate(&next, theirs.incarnation)),
                            None => self.register_locked(next).await,
                        }
                    }
                    _ => {
                        tracing::info!(
                            id = next.id,
                            "discovery: the store forgot this node; re-registering"
                        );
                        self.register_locked(next).await
                    }
                }
            }
            Err(err) => Err(DiscoveryError::store("heartbeat", err)),
        }
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        let _op = self.op.lock().await;
        let Some((me, revision)) = self.me.lock().clone() else {
            return Ok(());
        };
        if let Err(err) = self
            .kv
            .delete_expect_revision(self.key(me.id), Some(revision))
            .await
        {
            if err.kind() != kv::DeleteErrorKind::WrongLastRevision {
                return Err(DiscoveryError::store("unregister", err));
            }
            tracing::warn!(
                id = me.id,
                "discovery: unregister found our key rewritten by another process"
            );
        }
        *self.me.lock() = None;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, DiscoveryError> {
        let prefix = format!("{}.", self.config.cluster);
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| DiscoveryError::store("list keys", e))?
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        let mut out = Vec::new();
        for key in keys.into_iter().filter(|k| k.starts_with(&prefix)) {
            let entry = self
                .kv
                .entry(&key)
                .await
                .map_err(|e| DiscoveryError::store("read key", e))?;
            let Some(entry) = entry else { continue };
            if entry.operation != kv::Operation::Put || !fresh(&entry, self.config.lease) {
                continue;
            }
            if let Some(info) = decode_entry(&self.config.cluster, &entry) {
                out.push(info);
            }
        }
        out.sort_by_key(|n| n.id);
        Ok(out)
    }
}

/// The node id a key names, and its decoded value; `None` (logged) if not ours.
pub(super) fn decode_entry(cluster: &str, entry: &kv::Entry) -> Option<NodeInfo> {
    let id: u64 = entry
        .key
        .strip_prefix(cluster)
        .and_then(|k| k.strip_prefix('.'))
        .and_then(|k| k.parse().ok())?;
    let info = NodeInfo::decode(&entry.value, cluster, &entry.key)?;
    if info.id != id {
        tracing::warn!(key = %entry.key, "discovery: skipping entry whose info names another id");
        return None;
    }
    Some(info)
}

impl Discovery for NatsDiscovery {
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
        Box::pin(self.shared.list())
    }

    fn watch(&self) -> BoxFuture<'_, Result<MemberWatch, DiscoveryError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            if shared.client.connection_state() != async_nats::connection::State::Connected {
                return Err(DiscoveryError::store(
                    "watch",
                    format!("not connected to {}", shared.url),
                ));
            }
            Ok(MemberWatch::spawn(move |emitter, resyncs| {
                super::nats_watch::run(shared, emitter, resyncs)
            }))
        })
    }

    fn create_record<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, DiscoveryError>> {
        Box::pin(self.shared.create_record(name, value))
    }

    fn read_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DiscoveryError>> {
        Box::pin(self.shared.read_record(name))
    }
}
