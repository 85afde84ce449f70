//! What nodes say to each other on the mediator's service (tagged, beside
//! Raft's: see `transport/mux.rs`). Encoded through [`crate::codec`] with
//! catga's shallow depth limit; payloads are the users' encoded messages.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::ApplyError;

/// A request from one node's mediator to another's.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Are you there, and how busy are you?
    Ping,
    /// Run this query and answer with its encoded output.
    Query {
        /// The query's wire name.
        name: String,
        /// The encoded query.
        payload: ByteBuf,
        /// Wait for a read index from the leader first.
        linearizable: bool,
    },
    /// Run your handlers of this event.
    Event {
        /// The event's wire name.
        name: String,
        /// The encoded event.
        payload: ByteBuf,
    },
}

/// Why a remote call produced no answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// Decoding, running or encoding the query failed there (an unknown
    /// name, a panic): the same error a local call would give.
    Apply(ApplyError),
    /// The node could not serve it (starting, shutting down, no read index
    /// in time).
    Unavailable(String),
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// To `Ping`: the requests this node is serving, and its metadata.
    Pong {
        /// Requests in flight on this node's mediator.
        load: u64,
        /// What the node says about itself.
        metadata: std::collections::BTreeMap<String, String>,
        /// Where users reach its API (absent from an older node's answer).
        #[serde(default)]
        api_addr: Option<String>,
    },
    /// To `Query`: the encoded output.
    Answer(Result<ByteBuf, Failure>),
    /// To `Event`: how many handlers ran.
    Delivered(Result<u32, Failure>),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    crate::codec::encode(v).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    crate::codec::decode(b, crate::codec::INTERNAL_DEPTH).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node of the version before `api_addr` sends.
    #[derive(Serialize)]
    enum OldReply {
        Pong {
            load: u64,
            metadata: std::collections::BTreeMap<String, String>,
        },
    }

    #[test]
    fn a_pong_without_an_api_addr_still_decodes() {
        let old = OldReply::Pong {
            load: 7,
            metadata: [("zone".to_string(), "a".to_string())].into(),
        };
        let bytes = encode(&old).expect("encode");
        match decode::<Reply>(&bytes).expect("decode") {
            Reply::Pong {
                load,
                metadata,
                api_addr,
            } => {
                assert_eq!(load, 7);
                assert_eq!(metadata.get("zone").map(String::as_str), Some("a"));
                assert_eq!(api_addr, None);
            }
            other => panic!("decoded as {other:?}"),
        }
        // and an old node reads a new pong (the extra field is ignored)
        #[derive(Deserialize)]
        enum OldView {
            Pong {
                load: u64,
                #[allow(dead_code)]
                metadata: std::collections::BTreeMap<String, String>,
            },
        }
        let new = Reply::Pong {
            load: 3,
            metadata: Default::default(),
            api_addr: Some("10.0.0.5:8080".into()),
        };
        let bytes = encode(&new).expect("encode");
        let OldView::Pong { load, .. } =
            crate::codec::decode::<OldView>(&bytes, crate::codec::INTERNAL_DEPTH).expect("decode");
        assert_eq!(load, 3);
    }
}
