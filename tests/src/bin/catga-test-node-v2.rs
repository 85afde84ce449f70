//! A "newer version" of `catga-test-node` for rolling-upgrade tests: the
//! same program plus a command (`tests.v2.Note`) on a new state
//! (`tests.v2.Notes`), and a fixed handler for `tests.Abort`. Extra stdin
//! commands: `note TEXT` → `ok <number of notes>`, `abort` and
//! `abort-keyed KEY` → `ok 0` (or `poisoned <index>`, quarantined before).

use catga::prelude::*;
use catga_tests::Shop;

#[state(name = "tests.v2.Notes")]
#[derive(Default, Debug, Clone, PartialEq)]
struct Notes {
    list: Vec<String>,
}

#[command(name = "tests.v2.Note")]
struct Note {
    text: String,
}

#[handler]
fn note(cmd: Note, notes: &mut Notes) -> u64 {
    notes.list.push(cmd.text);
    notes.list.len() as u64
}

/// `tests.Abort`, as in `catga-test-node`, with its handler fixed.
#[command(name = "tests.Abort")]
struct Abort;

/// The fixed handler: no longer aborts.
#[handler]
fn abort(_cmd: Abort, _shop: &mut Shop) -> u32 {
    0
}

#[tokio::main]
async fn main() {
    catga_tests::node_main::run(|node, words| match words.first().map(String::as_str) {
        Some("note") => Some(Box::pin(async move {
            let text = words.get(1).cloned().ok_or("note TEXT")?;
            let n = node.send(Note { text }).await.map_err(|e| e.to_string())?;
            Ok(format!("ok {n}"))
        })),
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
