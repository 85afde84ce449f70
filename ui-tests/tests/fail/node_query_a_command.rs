use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop) -> u64 {
    shop.orders += 1;
    shop.orders
}

async fn run(node: &catga::Node) {
    let _ = node.query(PlaceOrder, Consistency::Linearizable).await;
}

fn main() {
    let _ = run;
}
