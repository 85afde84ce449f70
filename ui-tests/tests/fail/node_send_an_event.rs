use catga::prelude::*;

#[event]
pub struct OrderPlaced;

async fn run(node: &catga::Node) {
    let _ = node.send(OrderPlaced).await;
}

fn main() {
    let _ = run;
}
