//! TLS for the test clusters: one development CA per test process.
//! `CATGA_TEST_TLS=1` turns mutual TLS on in every cluster the harness
//! starts, in this process ([`crate::harness::Cluster`]) and in node
//! processes ([`crate::process::Proc`]); CI runs the cluster and process
//! suites so as well as without it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use catga::TlsConfig;
use catga::tls::DevCa;

/// Whether the suites run with TLS (`CATGA_TEST_TLS=1`).
pub fn enabled() -> bool {
    std::env::var("CATGA_TEST_TLS").is_ok_and(|v| v == "1")
}

/// This test process's CA.
pub fn ca() -> &'static DevCa {
    static CA: OnceLock<DevCa> = OnceLock::new();
    CA.get_or_init(|| DevCa::new().expect("a development CA"))
}

/// Node `id`'s settings (in memory).
pub fn config(id: u64) -> TlsConfig {
    ca().tls_config(id).expect("a node certificate")
}

/// Writes the CA and node `id`'s certificate and key into `dir` (the
/// layout `catga-test-node --tls DIR` reads); returns `dir`.
pub fn write_files(dir: &Path, id: u64) -> PathBuf {
    ca().write_node_files(dir, id).expect("write the TLS files");
    dir.to_path_buf()
}

/// `b` with node `id`'s TLS settings when the suites run with TLS.
pub fn maybe(b: catga::ClusterBuilder, id: u64) -> catga::ClusterBuilder {
    if enabled() { b.tls(config(id)) } else { b }
}
