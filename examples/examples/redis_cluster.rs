//! A cluster that forms and grows by itself, discovered through Redis.
//!
//! `cargo run -p catga-examples --example redis_cluster`
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`)
//!
//! The launcher starts nodes 1-3 as separate OS processes (children of
//! itself, `--node N`), each with the one-call builder:
//!
//! ```ignore
//! catga::cluster().node_id(id).listen("127.0.0.1:0").data_dir(dir)
//!     .discovery(catga::discovery::redis(url)).cluster_name(name)
//!     .bootstrap_expect(3).start().await?
//! ```
//!
//! It times the bootstrap, writes through a follower, kills a voter with
//! SIGKILL and keeps writing, starts node 4 (a learner that reads the latest
//! write locally), has a voter leave (node 4 takes its place), and prints a
//! checked summary line; it exits non-zero if a check fails.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    catga_examples::launcher::main("redis", "REDIS_URL", "redis://127.0.0.1:6379").await
}
