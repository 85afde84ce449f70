//! One catga node as an OS process, for tests whose fault happens to
//! processes (`kill -9`, SIGSTOP/SIGCONT, an abort inside a handler). The
//! stdin protocol is in [`catga_tests::node_main`]; this binary adds
//! `abort` and `abort-keyed KEY` (`Node::send_keyed`), answered `ok <n>`,
//! or `poisoned <index>` once the entry was quarantined.

use catga::prelude::*;
use catga_tests::Shop;

/// A command whose handler aborts the process, standing in for what no
/// `catch_unwind` can stop (a stack overflow, a failed allocation, a panic
/// in an `extern "C" fn`). `catga-test-node-v2` has it fixed.
#[command(name = "tests.Abort")]
struct Abort;

/// Aborts the process, unless it runs with `--survive-abort` (a host
/// where the entry does not crash: see `tests/it/poison.rs`).
#[handler]
fn abort(_cmd: Abort, _shop: &mut Shop) -> u32 {
    if catga_tests::node_main::SURVIVE_ABORT.load(std::sync::atomic::Ordering::SeqCst) {
        return 1;
    }
    std::process::abort()
}

#[tokio::main]
async fn main() {
    catga_tests::node_main::run(|node, words| match words.first().map(String::as_str) {
        Some("abort") => Some(Box::pin(async move {
            catga_tests::node_main::abort_answer(node.send(Abort).await)
        })),
        Some("abort-keyed") => Some(Box::pin(async move {
            let key = words.get(1).cloned().ok_or("abort-keyed KEY")?;
            catga_tests::node_main::abort_answer(node.send_keyed(key, Abort).await)
        })),
        _ => None,
    })
    .await
}
