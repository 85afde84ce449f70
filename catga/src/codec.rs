//! rmp-serde with limits: every decoder on the network and disk path goes
//! through here, so nested input cannot exhaust a worker's stack.

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Encodes `v` as maps with named fields (so an added field does not break
/// a rolling upgrade).
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(v)
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
