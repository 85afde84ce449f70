//! Frames: the rmp-serde encoded enum inside each length-prefixed frame.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Bytes in a nonce or a proof.
pub(crate) const NONCE_LEN: usize = 32;
/// The length prefix.
pub(crate) const LEN_PREFIX: usize = 4;
/// An upper bound on what a `Request` or `Response` frame adds to its body
/// (variant and field names, the id, the length of the body).
pub(crate) const FRAME_OVERHEAD: usize = 64;
/// How deep a frame's encoding may nest.
const MAX_DEPTH: usize = 16;
/// The frame limit before the peer has proved it knows the secret, so that an
/// unauthenticated peer cannot make us buffer a large frame.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 1024;

/// A node's identity beyond its id, exchanged in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ident {
    /// The cluster this node belongs to (0: not known yet, a node that
    /// joins and has not been contacted).
    pub cluster: u64,
    /// Chosen at random when the data dir is created: a wiped data dir is a
    /// new incarnation.
    pub incarnation: u64,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server: who I am, and a fresh nonce.
    Hello {
        /// The client's node id.
        node_id: u64,
        /// The client's nonce.
        nonce: [u8; NONCE_LEN],
        /// The client's identity, if it has one.
        ident: Option<Ident>,
    },
    /// Server → client: who I am, my nonce, and my proof that I know the secret.
    Challenge {
        /// The server's node id.
        node_id: u64,
        /// The server's nonce.
        nonce: [u8; NONCE_LEN],
        /// HMAC-SHA256 over the role "server", both node ids, both nonces
        /// and both identities.
        proof: [u8; NONCE_LEN],
        /// The server's identity, if it has one.
        ident: Option<Ident>,
    },
    /// Client → server: my proof that I know the secret.
    Proof {
        /// HMAC-SHA256 over the role "client", both node ids and both nonces.
        proof: [u8; NONCE_LEN],
    },
    /// Server → client: the handshake succeeded.
    Welcome,
    /// Server → client: the client proved it knows the secret, but its
    /// identity is refused (another cluster, or a wiped data dir).
    Refused {
        /// Why, for the refused node's log.
        reason: String,
    },
    /// A request.
    Request {
        /// Chosen by the caller, unique among its requests in flight.
        id: u64,
        /// The request.
        body: Bytes,
    },
    /// The response to the request with the same id.
    Response {
        /// The request's id.
        id: u64,
        /// The service's answer.
        result: Result<Bytes, String>,
    },
}

impl Frame {
    /// The variant's name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Welcome => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::Request { .. } => "Request",
            Frame::Response { .. } => "Response",
        }
    }

    fn as_wire(&self) -> Wire<'_> {
        match self {
            Frame::Hello {
                node_id,
                nonce,
                ident,
            } => Wire::Hello {
                node: *node_id,
                nonce,
                ident: *ident,
            },
            Frame::Challenge {
                node_id,
                nonce,
                proof,
                ident,
            } => Wire::Challenge {
                node: *node_id,
                nonce,
                proof,
                ident: *ident,
            },
            Frame::Proof { proof } => Wire::Proof { proof },
            Frame::Welcome => Wire::Welcome,
            Frame::Refused { reason } => Wire::Refused { reason },
            Frame::Request { id, body } => Wire::Request { id: *id, body },
            Frame::Response { id, result } => Wire::Response {
                id: *id,
                result: match result {
                    Ok(body) => WireResult::Ok(body),
                    Err(e) => WireResult::Err(e),
                },
            },
        }
    }
}

/// Why a frame did not decode or encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame exceeds the size limit.
    #[error("a frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame could not be encoded.
    #[error("could not encode a frame: {0}")]
    Encode(String),
}

/// The encoded form: borrows from the frame being encoded or decoded, so
/// bodies are never copied on decode.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Hello {
        node: u64,
        #[serde(borrow, with = "serde_bytes")]
        nonce: &'a [u8],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ident: Option<Ident>,
    },
    Challenge {
        node: u64,
        #[serde(borrow, with = "serde_bytes")]
        nonce: &'a [u8],
        #[serde(borrow, with = "serde_bytes")]
        proof: &'a [u8],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ident: Option<Ident>,
    },
    Proof {
        #[serde(borrow, with = "serde_bytes")]
        proof: &'a [u8],
    },
    Welcome,
    Refused {
        #[serde(borrow)]
        reason: &'a str,
    },
    Request {
        id: u64,
        #[serde(borrow, with = "serde_bytes")]
        body: &'a [u8],
    },
    Response {
        id: u64,
        #[serde(borrow)]
        result: WireResult<'a>,
    },
}

#[derive(Serialize, Deserialize)]
enum WireResult<'a> {
    Ok(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    Err(#[serde(borrow)] &'a str),
}

/// Decodes one frame's payload (the bytes after the length prefix). Never
/// panics; request and response bodies are slices of `payload`, not copies.
pub fn decode_frame(payload: Bytes) -> Result<Frame, FrameError> {
    // A frame nests 4 levels deep; unknown fields (skipped, for upgrades)
    // must not nest deep enough to exhaust the stack.
    let wire: Wire = crate::codec::decode_borrowed(&payload[..], MAX_DEPTH)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(match wire {
        Wire::Hello { node, nonce, ident } => Frame::Hello {
            node_id: node,
            nonce: array(nonce, "nonce")?,
            ident,
        },
        Wire::Challenge {
            node,
            nonce,
            proof,
            ident,
        } => Frame::Challenge {
            node_id: node,
            nonce: array(nonce, "nonce")?,
            proof: array(proof, "proof")?,
            ident,
        },
        Wire::Proof { proof } => Frame::Proof {
            proof: array(proof, "proof")?,
        },
        Wire::Welcome => Frame::Welcome,
        Wire::Refused { reason } => Frame::Refused {
            reason: reason.to_owned(),
        },
        Wire::Request { id, body } => Frame::Request {
            id,
            body: sub(&payload, body),
        },
        Wire::Response { id, result } => Frame::Response {
            id,
            result: match result {
                WireResult::Ok(body) => Ok(sub(&payload, body)),
                WireResult::Err(e) => Err(e.to_owned()),
            },
        },
    })
}

/// Splits `data` into length-prefixed frames (limit `max_frame_bytes`) and
/// decodes each, stopping at the first error or at an incomplete frame: the
/// whole read path, for fuzzing. Never panics.
pub fn decode_stream(data: &[u8], max_frame_bytes: usize) -> Vec<Result<Frame, FrameError>> {
    let mut codec = codec(max_frame_bytes);
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(payload)) => {
                let frame = decode_frame(payload.freeze());
                let stop = frame.is_err();
                out.push(frame);
                if stop {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(FrameError::Malformed(e.to_string())));
                return out;
            }
        }
    }
}

/// Appends `frame` to `dst` with its length prefix. On error `dst` is left as
/// it was.
pub(crate) fn encode_frame(
    frame: &Frame,
    max: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let max = max.min(u32::MAX as usize);
    let start = dst.len();
    let body_len = match frame {
        Frame::Request { body, .. }
        | Frame::Response {
            result: Ok(body), ..
        } => body.len(),
        Frame::Response { result: Err(e), .. } => e.len(),
        _ => 0,
    };
    dst.reserve(LEN_PREFIX + FRAME_OVERHEAD + body_len);
    dst.put_u32(0);
    if let Err(e) = encode_payload(frame, dst) {
        dst.truncate(start);
        return Err(e);
    }
    let len = dst.len() - start - LEN_PREFIX;
    if len > max {
        dst.truncate(start);
        return Err(FrameError::TooLarge { size: len, max });
    }
    // `len <= max <= u32::MAX`, so this does not truncate.
    dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends the frame's payload (without the length prefix) to `dst`.
pub(crate) fn encode_payload(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
    crate::codec::encode_into(dst.writer(), &frame.as_wire())
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// The length-delimited codec: 4-byte big-endian length, at most `max` bytes.
pub(crate) fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(LEN_PREFIX)
        .big_endian()
        .max_frame_length(max.min(u32::MAX as usize))
        .new_codec()
}

fn array(bytes: &[u8], what: &str) -> Result<[u8; NONCE_LEN], FrameError> {
    bytes.try_into().map_err(|_| {
        FrameError::Malformed(format!(
            "{what} has {} bytes, expected {NONCE_LEN}",
            bytes.len()
        ))
    })
}

/// `part` as a slice of `whole` without copying (a copy if, against
/// expectations, it does not lie inside `whole`).
fn sub(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if !part.is_empty() && end <= whole.len() => whole.slice(start..end),
        _ => Bytes::copy_from_slice(part),
    }
}
