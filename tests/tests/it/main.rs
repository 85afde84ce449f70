//! catga's integration tests: ONE test binary (`it`) with a module per
//! topic, so the suite links once instead of once per file.
//!
//! To add tests: put them in `tests/tests/it/<name>.rs` and add `mod <name>;`
//! below (keep the list sorted). A file written as its own test binary
//! (`tests/tests/<name>.rs`) moves here unchanged: `use catga_tests::...`,
//! `env!("CARGO_BIN_EXE_...")` and `#[tokio::test]` work the same in a module.
//!
//! Every test here shares one process with all the others and runs in
//! parallel with them, so a test must not assume it is alone:
//! - ports: bind `127.0.0.1:0` (see `catga_tests::harness`,
//!   `catga_tests::process::free_addr`), never a fixed port;
//! - files: a `tempfile::tempdir()` per test, never a fixed path;
//! - Redis / NATS: `catga_tests::servers::{shared_redis, shared_nats}` (one
//!   child server per test process, started on first use, or `REDIS_URL` /
//!   `NATS_URL`) with a `servers::unique(...)` key prefix / cluster name; a
//!   test that kills or restarts its server starts a private one
//!   (`ServerProcess::redis()` / `::nats()`);
//! - process-wide state (statics such as `catga_tests::ORDER_LOG`, event
//!   counters, env vars): filter by something unique to the test (a SKU, a
//!   cluster name), compare against a value read at the test's start, and
//!   never `std::env::set_var`;
//! - root-only tests call `catga_tests::need_root("why")` first.

mod availability;
mod cluster;
mod core;
mod discovery_nats;
mod discovery_redis;
mod faults;
mod full_disk;
mod http;
mod http_admin;
mod http_limit;
mod http_processes;
mod mediator;
mod mediator_processes;
mod nemesis;
mod odd_voters;
mod outcomes;
mod poison;
mod processes;
mod refused;
mod removed;
mod replaced_disk;
mod restart_lease;
mod restarts;
mod self_forming;
mod snapshots;
mod store_lost;
mod tls;
mod upgrade;
mod wire_abuse;
