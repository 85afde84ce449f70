//! Queries that read no state: async (may do I/O) and sync.

use catga::prelude::*;

#[query]
pub struct Lookup {
    pub key: String,
}

#[query]
pub struct Now;

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "catga::serde")]
pub struct Answer {
    pub key: String,
    pub len: usize,
}

#[handler]
async fn lookup(q: Lookup) -> Answer {
    tokio::task::yield_now().await;
    Answer {
        len: q.key.len(),
        key: q.key,
    }
}

#[handler]
fn now(_: Now) -> u64 {
    42
}

fn main() {}
