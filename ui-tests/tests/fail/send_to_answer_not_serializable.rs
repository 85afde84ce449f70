use catga::prelude::*;

#[query]
pub struct Peek;

pub struct Opaque(u32);

#[handler]
fn peek(_q: Peek) -> Opaque {
    Opaque(1)
}

async fn ask(node: catga::Node) {
    let _ = node.send_to(2, Peek).await;
}

fn main() {}
