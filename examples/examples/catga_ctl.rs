//! `catga_ctl`: a small command line over a node's admin routes, as
//! etcdctl is for etcd. It speaks only HTTP (`catga::http`'s `/admin/..`
//! routes); any node of the cluster will do.
//!
//! ```text
//! export CATGA_ADMIN_TOKEN=...   # the token the nodes were started with
//! cargo run --example catga_ctl -- --url http://127.0.0.1:8081 members
//! cargo run --example catga_ctl -- --url http://127.0.0.1:8081 remove 3
//! cargo run --example catga_ctl -- --url http://127.0.0.1:8081 snapshot
//! cargo run --example catga_ctl -- --url http://127.0.0.1:8083 leave
//! cargo run --example catga_ctl -- --url http://127.0.0.1:8081 health
//! ```
//!
//! `--url` defaults to `$CATGA_URL`, then `http://127.0.0.1:8081`. Exit
//! status: 0 on success, 1 when the node refused (its JSON error is
//! printed), 2 for a usage error.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

const USAGE: &str = "usage: catga_ctl [--url URL] [--token-env VAR] COMMAND
commands:
  members       every member: id, role, liveness, Raft and HTTP addresses
  remove ID     remove node ID from the cluster for good
  leave         the node at URL leaves the cluster and shuts down
  snapshot      the node at URL takes a snapshot now
  health        the node at URL's health, as JSON
the token is read from $CATGA_ADMIN_TOKEN (or the variable --token-env names)";

enum Cmd {
    Members,
    Remove(u64),
    Leave,
    Snapshot,
    Health,
}

struct Args {
    url: String,
    token_var: String,
    cmd: Cmd,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut url = std::env::var("CATGA_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let mut token_var = "CATGA_ADMIN_TOKEN".to_string();
    let mut cmd = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--token-env" => token_var = args.next().ok_or("--token-env needs a value")?,
            "members" => cmd = Some(Cmd::Members),
            "leave" => cmd = Some(Cmd::Leave),
            "snapshot" => cmd = Some(Cmd::Snapshot),
            "health" => cmd = Some(Cmd::Health),
            "remove" => {
                let id = args.next().ok_or("remove needs a node id")?;
                let id = id
                    .parse()
                    .map_err(|_| format!("`{id}` is not a node id (a number)"))?;
                cmd = Some(Cmd::Remove(id));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let url = if url.contains("://") {
        url
    } else {
        // an api_addr as `members` prints it
        format!("http://{url}")
    };
    Ok(Args {
        url: url.trim_end_matches('/').to_string(),
        token_var,
        cmd: cmd.ok_or("no command given")?,
    })
}

/// Sends the command; returns what to print, or why it failed (the node's
/// own error message, or why no answer came).
async fn run(a: Args) -> Result<String, String> {
    let client = reqwest::Client::builder()
        // a leave or a removal waits for the cluster; give it time
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let token = std::env::var(&a.token_var).ok().filter(|t| !t.is_empty());
    let (method, path) = match &a.cmd {
        Cmd::Members => (reqwest::Method::GET, "/admin/members".to_string()),
        Cmd::Remove(id) => (reqwest::Method::DELETE, format!("/admin/members/{id}")),
        Cmd::Leave => (reqwest::Method::POST, "/admin/leave".to_string()),
        Cmd::Snapshot => (reqwest::Method::POST, "/admin/snapshot".to_string()),
        Cmd::Health => (reqwest::Method::GET, "/health".to_string()),
    };
    let url = format!("{}{path}", a.url);
    let mut req = client.request(method, &url);
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{url}: no answer: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("{url}: {status}, and the body is not JSON: {e}"))?;
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("(no error message)");
        let hint = match status.as_u16() {
            401 if token.is_none() => format!(" (${} is not set)", a.token_var),
            404 if !matches!(a.cmd, Cmd::Remove(_)) => {
                " (are the admin routes on for this node? they need an `Admin` token)".into()
            }
            _ => String::new(),
        };
        return Err(format!("{url}: {status}: {error}{hint}"));
    }
    Ok(match a.cmd {
        Cmd::Members => members_table(&body),
        Cmd::Remove(id) => format!("node {id} removed"),
        Cmd::Leave => format!(
            "node {} left the cluster and shut down; stop its process",
            body["left"]
        ),
        Cmd::Snapshot if status.as_u16() == 202 => format!(
            "snapshot started, not finished yet: {}",
            body["note"].as_str().unwrap_or("")
        ),
        Cmd::Snapshot => format!(
            "node {}: snapshot at index {}",
            body["node"], body["snapshot_index"]
        ),
        Cmd::Health => serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?,
    })
}

fn members_table(body: &Value) -> String {
    let mut out = format!(
        "{:>6}  {:<9} {:<8} {:<22} {}\n",
        "ID", "ROLE", "LIVENESS", "RAFT", "API"
    );
    for m in body.as_array().into_iter().flatten() {
        let s = |k: &str| m[k].as_str().unwrap_or("-").to_string();
        let api = m["api_addr"].as_str().unwrap_or("-");
        out.push_str(&format!(
            "{:>6}  {:<9} {:<8} {:<22} {}\n",
            m["id"].as_u64().map_or("-".into(), |id| id.to_string()),
            s("role"),
            s("liveness"),
            s("addr"),
            api
        ));
    }
    out.trim_end().to_string()
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("catga_ctl: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("catga_ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("catga_ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
