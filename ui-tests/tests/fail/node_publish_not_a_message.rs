pub struct OrderPlaced;

async fn run(node: &catga::Node) {
    let _ = node.publish(OrderPlaced).await;
}

fn main() {
    let _ = run;
}
