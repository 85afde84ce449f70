//! The command line of a node process of a static 3-node cluster, shared by
//! `examples/http_service.rs` and `examples/failover.rs`, which run each
//! node as a child process of themselves (`--node N --http ADDR --raft ADDR
//! --peer ID=ADDR ... --data-dir DIR`).

/// One node's flags.
pub struct NodeArgs {
    pub id: u64,
    /// Where it serves HTTP.
    pub http: String,
    /// Where it listens for its peers.
    pub raft: String,
    pub peers: Vec<(u64, String)>,
    pub data_dir: String,
}

/// Parses the flags after the program name.
pub fn parse_node(mut args: impl Iterator<Item = String>) -> Result<NodeArgs, String> {
    let mut n = NodeArgs {
        id: 0,
        http: String::new(),
        raft: String::new(),
        peers: Vec::new(),
        data_dir: String::new(),
    };
    while let Some(flag) = args.next() {
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--node" => n.id = v.parse().map_err(|e| format!("--node: {e}"))?,
            "--http" => n.http = v,
            "--raft" => n.raft = v,
            "--data-dir" => n.data_dir = v,
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
