//! A cluster that forms and grows by itself, discovered through NATS JetStream KV.
//!
//! `cargo run -p catga-examples --example nats_cluster`
//! (`NATS_URL`, default `nats://127.0.0.1:4222`)
//!
//! The launcher starts nodes 1-3 as separate OS processes (children of
//! itself, `--node N`), each with the one-call builder:
//!
//! ```ignore
//! catga::cluster().node_id(id).listen("127.0.0.1:0").data_dir(dir)
//!     .discovery(catga::discovery::nats(url)).cluster_name(name)
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
    catga_examples::launcher::main("nats", "NATS_URL", "nats://127.0.0.1:4222").await
}
