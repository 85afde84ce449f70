//! The command line of a node process of a static 3-node cluster, shared by
//! `examples/http_service.rs` and `examples/failover.rs`, which run each
//! node as a child process of themselves (`--node N --http ADDR --raft ADDR
//! --peer ID=ADDR ... --data-dir DIR [--tls DIR]`).

/// One node's flags.
pub struct NodeArgs {
    pub id: u64,
    /// Where it serves HTTP.
    pub http: String,
    /// Where it listens for its peers.
    pub raft: String,
    pub peers: Vec<(u64, String)>,
    pub data_dir: String,
    /// A directory with `ca.pem`, `node-<id>.pem` and `node-<id>.key`:
    /// mutual TLS between the nodes (required off loopback).
    pub tls: Option<String>,
}

impl NodeArgs {
    /// The node's TLS settings, if `--tls` was given.
    pub fn tls_config(&self) -> Result<Option<catga::TlsConfig>, String> {
        let Some(dir) = &self.tls else {
            return Ok(None);
        };
        let dir = std::path::Path::new(dir);
        let id = self.id;
        catga::TlsConfig::from_pem_files(
            dir.join("ca.pem"),
            dir.join(format!("node-{id}.pem")),
            dir.join(format!("node-{id}.key")),
        )
        .map(Some)
        .map_err(|e| format!("--tls: {e}"))
    }
}

/// Mints a development CA and certificates for nodes `ids` into `dir`, in
/// the layout `--tls DIR` reads.
pub fn write_dev_certs(
    dir: &std::path::Path,
    ids: impl IntoIterator<Item = u64>,
) -> Result<(), String> {
    let ca = catga::tls::DevCa::new().map_err(|e| e.to_string())?;
    for id in ids {
        ca.write_node_files(dir, id)
            .map_err(|e| format!("writing certificates into {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Parses the flags after the program name.
pub fn parse_node(mut args: impl Iterator<Item = String>) -> Result<NodeArgs, String> {
    let mut n = NodeArgs {
        id: 0,
        http: String::new(),
        raft: String::new(),
        peers: Vec::new(),
        data_dir: String::new(),
        tls: None,
    };
    while let Some(flag) = args.next() {
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--node" => n.id = v.parse().map_err(|e| format!("--node: {e}"))?,
            "--http" => n.http = v,
            "--raft" => n.raft = v,
            "--data-dir" => n.data_dir = v,
            "--tls" => n.tls = Some(v),
            "--peer" => {
                let (id, addr) = v.split_once('=').ok_or("--peer ID=ADDR")?;
                n.peers
                    .push((id.parse().map_err(|e| format!("--peer: {e}"))?, addr.into()));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(n)
}

/// A free port on 127.0.0.1, as `127.0.0.1:PORT`.
pub fn free_addr() -> Result<String, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .map_err(|e| format!("no free port: {e}"))
}
