//! The one codec: rmp-serde, maps with named fields, and depth limits.
//! Everything catga encodes or decodes (messages, outputs, states, log
//! records, RPC bodies, snapshots) goes through here, so nested input cannot
//! exhaust a worker's stack and an added field never breaks a rolling
//! upgrade.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApplyError;

/// Nesting allowed in catga's own formats (RPC bodies, log records,
/// snapshot envelopes): they nest a handful of levels.
pub(crate) const INTERNAL_DEPTH: usize = 48;
/// Nesting allowed in user types (messages, outputs, states): deep enough
/// for real data, shallow enough for a 2 MiB worker stack in a debug build.
pub(crate) const USER_DEPTH: usize = 256;

/// Decodes `bytes` allowing at most `depth` levels of nesting.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(depth);
    T::deserialize(&mut de)
}

/// Decodes one value from a reader allowing at most `depth` levels of
/// nesting; reads no byte past the value's end, so values written one after
/// another (a snapshot file) are decoded in turn.
pub(crate) fn decode_from<T: DeserializeOwned>(
    r: &mut dyn std::io::Read,
    depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::new(r);
    de.set_max_depth(depth);
    T::deserialize(&mut de)
}

/// Decodes `bytes` into a value that may borrow from them (frames).
pub(crate) fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(depth);
    T::deserialize(&mut de)
}

/// Encodes `v` as maps with named fields straight into a writer (frames).
pub(crate) fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
    w: W,
    v: &T,
) -> Result<(), rmp_serde::encode::Error> {
    v.serialize(&mut rmp_serde::Serializer::new(w).with_struct_map())
}

/// Encodes `v` as maps with named fields (so an added field does not break
/// a rolling upgrade).
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(v)
}

/// Encodes a user value (a message, an output, an event); `what` names it
/// in the error.
pub(crate) fn encode_user<T: Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>, ApplyError> {
    encode(v).map_err(|e| ApplyError::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes a user value (a message, an output, a state) with the user depth
/// limit; `what` names it in the error.
pub(crate) fn decode_user<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ApplyError> {
    decode(bytes, USER_DEPTH).map_err(|e| ApplyError::Decode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Runs `f` on a thread with a large stack (restoring a big snapshot of
/// deeply nested user data), waiting for it without blocking the runtime.
pub(crate) async fn on_big_stack<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("catga-snapshot".into())
        .stack_size(256 << 20)
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the snapshot thread panicked"))
}

/// [`on_big_stack`] for synchronous callers (start-up).
pub(crate) fn on_big_stack_sync<R: Send>(f: impl FnOnce() -> R + Send) -> std::io::Result<R> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("catga-snapshot".into())
            .stack_size(256 << 20)
            .spawn_scoped(scope, f)?
            .join()
            .map_err(|_| std::io::Error::other("the snapshot thread panicked"))
    })
}
