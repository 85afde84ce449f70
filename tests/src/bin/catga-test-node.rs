//! One catga node as an OS process, for tests whose fault happens to
//! processes (`kill -9`, SIGSTOP/SIGCONT, an abort inside a handler). The
//! stdin protocol is in [`catga_tests::node_main`]; this binary adds
//! `abort`.

use catga::prelude::*;
use catga_tests::Shop;

/// A command whose handler aborts the process, standing in for what no
/// `catch_unwind` can stop (a stack overflow, a failed allocation, a panic
/// in an `extern "C" fn`). `catga-test-node-v2` has it fixed.
#[command(name = "tests.Abort")]
struct Abort;

#[handler]
fn abort(_cmd: Abort, _shop: &mut Shop) -> u32 {
    std::process::abort()
}

#[tokio::main]
async fn main() {
    catga_tests::node_main::run(|node, words| {
        if words.first().map(String::as_str) != Some("abort") {
            return None;
        }
        Some(Box::pin(async move {
            let n = node.send(Abort).await.map_err(|e| e.to_string())?;
            Ok(format!("ok {n}"))
        }))
    })
    .await
}
