//! The static backend: a fixed peer list (the command line's `--peer`s),
//! plus whatever this process registers itself. Nothing ever expires.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::view::MemberWatch;
use super::{
    BoxFuture, Discovery, DiscoveryConfig, DiscoveryError, LeaveReason, MemberEvent, NodeInfo,
};

/// Discovery from a fixed list of peers. Watches start with the peers as
/// `Joined` and then only see this process's own register / unregister.
#[derive(Debug)]
pub struct StaticDiscovery {
    config: DiscoveryConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<u64, NodeInfo>,
    me: Option<u64>,
    records: BTreeMap<String, String>,
    watchers: Vec<mpsc::UnboundedSender<MemberEvent>>,
}

impl State {
    fn publish(&mut self, event: MemberEvent) {
        self.watchers.retain(|w| w.send(event.clone()).is_ok());
    }
}

impl StaticDiscovery {
    /// Discovery for `config.cluster` whose members are `peers`.
    pub fn new(config: DiscoveryConfig, peers: Vec<NodeInfo>) -> Result<Self, DiscoveryError> {
        config.validate()?;
        let mut members = BTreeMap::new();
        for peer in peers {
            config.check_info(&peer)?;
            if members.insert(peer.id, peer).is_some() {
                return Err(DiscoveryError::InvalidConfig(
                    "the peer list names one id twice; give each peer its own id".into(),
                ));
            }
        }
        Ok(StaticDiscovery {
            config,
            state: Mutex::new(State {
                members,
                ..State::default()
            }),
        })
    }
}

impl Discovery for StaticDiscovery {
    fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    fn register(&self, info: NodeInfo) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            self.config.check_info(&info)?;
            let mut state = self.state.lock();
            let event = match state.members.get(&info.id) {
                Some(known) if known.incarnation == info.incarnation => {
                    MemberEvent::Updated(info.clone())
                }
                _ => MemberEvent::Joined(info.clone()),
            };
            state.me = Some(info.id);
            state.members.insert(info.id, info);
            state.publish(event);
            Ok(())
        })
    }

    fn heartbeat(&self, load: f64) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let me = state.me.ok_or(DiscoveryError::NotRegistered)?;
            if let Some(info) = state.members.get_mut(&me) {
                info.load = load;
            }
            Ok(())
        })
    }

    fn unregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let Some(me) = state.me.take() else {
                return Ok(());
            };
            if let Some(info) = state.members.remove(&me) {
                state.publish(MemberEvent::Left {
                    id: me,
                    incarnation: info.incarnation,
                    reason: LeaveReason::Graceful,
                });
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DiscoveryError>> {
        Box::pin(async move { Ok(self.state.lock().members.values().cloned().collect()) })
    }

    fn watch(&self) -> BoxFuture<'_, Result<MemberWatch, DiscoveryError>> {
        Box::pin(async move {
            // Snapshot and subscription under one lock: nothing slips between.
            let (snapshot, mut changes) = {
                let mut state = self.state.lock();
                let (tx, rx) = mpsc::unbounded_channel();
                state.watchers.push(tx);
                (state.members.values().cloned().collect::<Vec<_>>(), rx)
            };
            let watch = MemberWatch::spawn(move |emitter, _| async move {
                let mut events: Vec<_> = snapshot.into_iter().map(MemberEvent::Joined).collect();
                if !emitter.emit(&mut events).await {
                    return;
                }
                while let Some(event) = changes.recv().await {
                    if !emitter.emit(&mut vec![event]).await {
                        return;
                    }
                }
            });
            Ok(watch)
        })
    }

    fn create_record<'a>(
        &'a self,
        name: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, DiscoveryError>> {
        Box::pin(async move {
            super::check_record_name(name)?;
            let mut state = self.state.lock();
            Ok(state
                .records
                .entry(name.to_string())
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
            Ok(self.state.lock().records.get(name).cloned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_watch_starts_with_the_peers_then_sees_own_changes() {
        let config = DiscoveryConfig::new("c");
        let peers = vec![NodeInfo::new("c", 1, "a:1"), NodeInfo::new("c", 2, "a:2")];
        let d = StaticDiscovery::new(config, peers).unwrap();
        let mut w = d.watch().await.unwrap();
        assert!(matches!(w.next().await, Some(MemberEvent::Joined(n)) if n.id == 1));
        assert!(matches!(w.next().await, Some(MemberEvent::Joined(n)) if n.id == 2));
        d.register(NodeInfo::new("c", 3, "a:3")).await.unwrap();
        assert!(matches!(w.next().await, Some(MemberEvent::Joined(n)) if n.id == 3));
        d.heartbeat(0.5).await.unwrap();
        d.unregister().await.unwrap();
        assert!(matches!(
            w.next().await,
            Some(MemberEvent::Left {
                id: 3,
                reason: LeaveReason::Graceful,
                ..
            })
        ));
        assert_eq!(d.list().await.unwrap().len(), 2);
        assert!(
            StaticDiscovery::new(DiscoveryConfig::new("c"), vec![NodeInfo::new("x", 1, "a")])
                .is_err()
        );
    }
}
