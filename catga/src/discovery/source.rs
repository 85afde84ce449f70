//! Which discovery store a node uses, named before the node knows its
//! cluster name: [`redis()`], [`nats()`], a [`MemoryStore`], or any
//! [`Discovery`] of yours. The cluster builder connects it in `start()`.

use std::sync::Arc;

use super::{Discovery, DiscoveryConfig, DiscoveryError, MemoryStore};
#[cfg(feature = "nats")]
use super::{NatsDiscovery, NatsOptions};
#[cfg(feature = "redis")]
use super::{RedisDiscovery, RedisOptions};

/// A discovery store to connect to: [`redis()`] (cargo feature `redis`),
/// [`nats()`] (feature `nats`), a [`MemoryStore`] (one process, for tests)
/// or your own [`Discovery`] ([`DiscoverySource::custom`]).
///
/// ```
/// # #[cfg(feature = "redis")] {
/// let source = catga::discovery::redis("redis://127.0.0.1:6379");
/// let node = catga::cluster().discovery(source).cluster_name("shop");
/// # drop(node);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DiscoverySource {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    #[cfg(feature = "redis")]
    Redis(RedisOptions),
    #[cfg(feature = "nats")]
    Nats(NatsOptions),
    Memory(MemoryStore),
    Custom(Arc<dyn Discovery>),
}

/// Discovery through Redis at `url` (`redis://host:port[/db]`), with the
/// default [`RedisOptions`].
///
/// ```
/// let source = catga::discovery::redis("redis://127.0.0.1:6379");
/// # drop(source);
/// ```
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub fn redis(url: impl Into<String>) -> DiscoverySource {
    RedisOptions::new(url).into()
}

/// Discovery through NATS JetStream KV at `url` (`nats://host:port`), with
/// the default [`NatsOptions`].
///
/// ```
/// let source = catga::discovery::nats("nats://127.0.0.1:4222");
/// # drop(source);
/// ```
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub fn nats(url: impl Into<String>) -> DiscoverySource {
    NatsOptions::new(url).into()
}

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl From<RedisOptions> for DiscoverySource {
    fn from(o: RedisOptions) -> Self {
        DiscoverySource {
            kind: Kind::Redis(o),
        }
    }
}

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
impl From<NatsOptions> for DiscoverySource {
    fn from(o: NatsOptions) -> Self {
        DiscoverySource {
            kind: Kind::Nats(o),
        }
    }
}

impl From<MemoryStore> for DiscoverySource {
    fn from(s: MemoryStore) -> Self {
        DiscoverySource {
            kind: Kind::Memory(s),
        }
    }
}

impl DiscoverySource {
    /// A discovery you connected yourself; its config's cluster name is the
    /// cluster's name (the builder's `cluster_name` must match or be unset).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use catga::discovery::{DiscoveryConfig, DiscoverySource, MemoryStore};
    /// let d = MemoryStore::new().discovery(DiscoveryConfig::new("shop")).unwrap();
    /// let source = DiscoverySource::custom(Arc::new(d));
    /// assert_eq!(source.fixed_cluster(), Some("shop"));
    /// ```
    pub fn custom(discovery: Arc<dyn Discovery>) -> Self {
        DiscoverySource {
            kind: Kind::Custom(discovery),
        }
    }

    /// The cluster name a [`custom`](Self::custom) discovery is bound to.
    ///
    /// ```
    /// # #[cfg(feature = "redis")]
    /// assert_eq!(catga::discovery::redis("redis://h:1").fixed_cluster(), None);
    /// ```
    pub fn fixed_cluster(&self) -> Option<&str> {
        match &self.kind {
            Kind::Custom(d) => Some(d.config().cluster.as_str()),
            _ => None,
        }
    }

    /// Connects with `config` (ignored by a custom discovery).
    pub(crate) async fn connect(
        self,
        config: DiscoveryConfig,
    ) -> Result<Arc<dyn Discovery>, DiscoveryError> {
        Ok(match self.kind {
            #[cfg(feature = "redis")]
            Kind::Redis(o) => Arc::new(RedisDiscovery::connect(o, config).await?),
            #[cfg(feature = "nats")]
            Kind::Nats(o) => Arc::new(NatsDiscovery::connect(o, config).await?),
            Kind::Memory(s) => Arc::new(s.discovery(config)?),
            Kind::Custom(d) => d,
        })
    }
}
