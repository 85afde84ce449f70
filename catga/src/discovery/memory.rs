//! The in-memory backend: one [`MemoryStore`] shared by the nodes of one
//! process (tests, demos). Nothing expires by itself; [`MemoryStore::expire`]
//! plays a lease running out.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::view::MemberWatch;
use super::{
    BoxFuture, Discovery, DiscoveryConfig, DiscoveryError, LeaveReason, MemberEvent, NodeInfo,
};

/// A discovery store in this process's memory, shared by every
/// [`MemoryDiscovery`] made from it (clones share the same store).
///
/// ```
/// use catga::discovery::{Discovery, DiscoveryConfig, MemoryStore};
/// let store = MemoryStore::new();
/// let one = store.discovery(DiscoveryConfig::new("shop")).unwrap();
/// assert_eq!(one.config().cluster, "shop");
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Hub>>,
}

#[derive(Debug, Default)]
struct Hub {
    /// (cluster, id) → the registered node.
    members: BTreeMap<(String, u64), NodeInfo>,
    /// (cluster, name) → value.
    records: BTreeMap<(String, String), String>,
    watchers: Vec<(String, mpsc::UnboundedSender<MemberEvent>)>,
}

impl Hub {
    fn publish(&mut self, cluster: &str, event: MemberEvent) {
        self.watchers
            .retain(|(c, w)| c != cluster || w.send(event.clone()).is_ok());
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A discovery handle for one node, on this store.
    pub fn discovery(&self, config: DiscoveryConfig) -> Result<MemoryDiscovery, DiscoveryError> {
        config.validate()?;
        Ok(MemoryDiscovery {
            config,
            store: self.clone(),
            me: Mutex::new(None),
        })
    }

    /// Node `id` of `cluster` stops being a member as if its lease passed
    /// (watchers see `Left { Expired }`). Returns whether it was a member.
    ///
    /// ```
    /// let store = catga::discovery::MemoryStore::new();
    /// assert!(!store.expire("shop", 1));
    /// ```
    pub fn expire(&self, cluster: &str, id: u64) -> bool {
        let mut hub = self.inner.lock();
        match hub.members.remove(&(cluster.to_string(), id)) {
            Some(info) => {
                hub.publish(
                    cluster,
                    MemberEvent::Left {
                        id,
                        incarnation: info.incarnation,
                        reason: LeaveReason::Expired,
                    },
                );
                true
            }
            None => false,
        }
    }
}

/// One node's handle on a [`MemoryStore`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use catga::discovery::{Discovery, DiscoveryConfig, MemoryStore, NodeInfo};
/// let store = MemoryStore::new();
/// let d = store.discovery(DiscoveryConfig::new("shop")).unwrap();
/// d.register(NodeInfo::new("shop", 1, "127.0.0.1:7001")).await.unwrap();
/// assert_eq!(d.list().await.unwrap().len(), 1);
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryDiscovery {
    config: DiscoveryConfig,
    store: MemoryStore,
    me: Mutex<Option<u64>>,
}

impl Discovery for MemoryDiscovery {
    fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            self.config.check_info(&info)?;
            let cluster = self.config.cluster.clone();
            let mut hub = self.store.inner.lock();
            let key = (cluster.clone(), info.id);
            let event = match hub.members.get(&key) {
                Some(known) if known.incarnation == info.incarnation => {
                    MemberEvent::Updated(info.clone())
                }
                Some(known) if *self.me.lock() != Some(info.id) => {
                    return Err(DiscoveryError::DuplicateId {
                        id: info.id,
                        cluster,
                        holder: known.incarnation,
                        ours: info.incarnation,
                        retry_after: self.config.lease,
                    });
                }
                _ => MemberEvent::Joined(info.clone()),
            };
            *self.me.lock() = Some(info.id);
            hub.members.insert(key, info);
            hub.publish(&cluster, event);
            Ok(())
        })
    }

    fn heartbeat(&self, load: f64) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let me = self.me.lock().ok_or(DiscoveryError::NotRegistered)?;
            let mut hub = self.store.inner.lock();
            if let Some(info) = hub.members.get_mut(&(self.config.cluster.clone(), me)) {
                info.load = load;
            }
            Ok(())
        })
    }

    fn unregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let Some(me) = self.me.lock().take() else {
                return Ok(());
            };
            let cluster = self.config.cluster.clone();
            let mut hub = self.store.inner.lock();
            if let Some(info) = hub.members.remove(&(cluster.clone(), me)) {
                hub.publish(
                    &cluster,
                    MemberEvent::Left {
                        id: me,
                        incarnation: info.incarnation,
                        reason: LeaveReason::Graceful,
                    },
                );
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DiscoveryError>> {
        Box::pin(async move {
            let hub = self.store.inner.lock();
            Ok(hub
                .members
                .iter()
                .filter(|((c, _), _)| *c == self.config.cluster)
                .map(|(_, n)| n.clone())
                .collect())
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<MemberWatch, DiscoveryError>> {
        Box::pin(async move {
            let (snapshot, mut changes) = {
                let mut hub = self.store.inner.lock();
                let (tx, rx) = mpsc::unbounded_channel();
                hub.watchers.push((self.config.cluster.clone(), tx));
                let snapshot: Vec<NodeInfo> = hub
                    .members
                    .iter()
                    .filter(|((c, _), _)| *c == self.config.cluster)
                    .map(|(_, n)| n.clone())
                    .collect();
                (snapshot, rx)
            };
            Ok(MemberWatch::spawn(move |emitter, _| async move {
                let mut events: Vec<_> = snapshot.into_iter().map(MemberEvent::Joined).collect();
                if !emitter.emit(&mut events).await {
                    return;
                }
                while let Some(event) = changes.recv().await {
                    if !emitter.emit(&mut vec![event]).await {
                        return;
                    }
                }
            }))
        })
    }

    fn create_record<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, DiscoveryError>> {
        Box::pin(async move {
            super::check_record_name(name)?;
            let mut hub = self.store.inner.lock();
            Ok(hub
                .records
                .entry((self.config.cluster.clone(), name.to_string()))
                .or_insert_with(|| value.to_string())
                .clone())
        })
    }

    fn read_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DiscoveryError>> {
        Box::pin(async move {
            super::check_record_name(name)?;
            let hub = self.store.inner.lock();
            Ok(hub
                .records
                .get(&(self.config.cluster.clone(), name.to_string()))
                .cloned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nodes_on_one_store_see_each_other_and_records_are_created_once() {
        let store = MemoryStore::new();
        let a = store.discovery(DiscoveryConfig::new("c")).unwrap();
        let b = store.discovery(DiscoveryConfig::new("c")).unwrap();
        let other = store.discovery(DiscoveryConfig::new("d")).unwrap();
        let mut w = b.watch().await.unwrap();
        a.register(NodeInfo::new("c", 1, "x:1")).await.unwrap();
        other.register(NodeInfo::new("d", 9, "x:9")).await.unwrap();
        assert!(matches!(w.next().await, Some(MemberEvent::Joined(n)) if n.id == 1));
        assert_eq!(a.create_record("id", "one").await.unwrap(), "one");
        assert_eq!(b.create_record("id", "two").await.unwrap(), "one");
        assert_eq!(other.read_record("id").await.unwrap(), None);
        assert!(store.expire("c", 1));
        assert!(matches!(
            w.next().await,
            Some(MemberEvent::Left {
                id: 1,
                reason: LeaveReason::Expired,
                ..
            })
        ));
        assert!(a.create_record("bad name", "v").await.is_err());
    }
}
