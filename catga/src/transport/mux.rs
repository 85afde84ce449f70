//! Several services on one server: a request whose body starts with a
//! service tag goes to that service, anything else to the primary one
//! (Raft's).
//!
//! The tag is a byte that never starts a MessagePack value (`0xc1` is
//! "never used" in the format), so no body a node of the previous version
//! sends (always one rmp-encoded value) is mistaken for a tagged one:
//! their Raft traffic is served as before. A tagged request sent to a node
//! of the previous version fails to decode there and is answered with its
//! "bad request" error; that node keeps serving.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::Service;

/// The leading byte of a request for the mediator's service.
pub(crate) const MEDIATOR_TAG: u8 = 0xc1;

/// The primary service and the mediator's, which is set once the node
/// exists (the server starts before it).
pub(crate) struct Mux {
    primary: Arc<dyn Service>,
    mediator: OnceLock<Arc<dyn Service>>,
}

impl Mux {
    pub(crate) fn new(primary: Arc<dyn Service>) -> Arc<Mux> {
        Arc::new(Mux {
            primary,
            mediator: OnceLock::new(),
        })
    }

    /// Serves tagged requests with `service` (only the first call counts).
    pub(crate) fn set_mediator(&self, service: Arc<dyn Service>) {
        let _ = self.mediator.set(service);
    }
}

/// `body` with the mediator's tag in front.
pub(crate) fn mediator_body(body: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(MEDIATOR_TAG);
    v.extend_from_slice(body);
    Bytes::from(v)
}

impl Service for Mux {
    fn inline(&self, body: &Bytes) -> bool {
        // the mediator's requests run user handlers: a task each
        body.first() != Some(&MEDIATOR_TAG) && self.primary.inline(body)
    }

    fn call(&self, from: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        if body.first() != Some(&MEDIATOR_TAG) {
            return self.primary.call(from, body);
        }
        match self.mediator.get() {
            Some(s) => s.call(from, body.slice(1..)),
            None => futures::future::ready(Err("node is starting".to_string())).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(&'static str);
    impl Service for Echo {
        fn call(&self, _: u64, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
            let mut v = self.0.as_bytes().to_vec();
            v.extend_from_slice(&body);
            futures::future::ready(Ok(Bytes::from(v))).boxed()
        }
    }

    #[tokio::test]
    async fn tagged_bodies_reach_the_mediator_and_the_rest_the_primary() {
        let mux = Mux::new(Arc::new(Echo("raft:")));
        // no mediator yet: refused, not handed to Raft
        let early = mux.call(1, mediator_body(b"x")).await;
        assert_eq!(early, Err("node is starting".to_string()));
        mux.set_mediator(Arc::new(Echo("med:")));
        let m = mux.call(1, mediator_body(b"x")).await;
        assert_eq!(m.as_deref(), Ok(&b"med:x"[..]));
        // any rmp value (a Raft body) goes to the primary, untouched
        let raft = crate::codec::encode(&crate::raft::wire::Rpc::ReadIndex).expect("encode");
        assert_ne!(raft.first(), Some(&MEDIATOR_TAG));
        let r = mux.call(1, Bytes::from(raft.clone())).await.expect("ok");
        assert_eq!(&r[..5], b"raft:");
        assert_eq!(&r[5..], &raft[..]);
        let empty = mux.call(1, Bytes::new()).await.expect("ok");
        assert_eq!(&empty[..], b"raft:");
    }
}
