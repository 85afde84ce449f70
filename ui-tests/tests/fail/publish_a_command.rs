use catga::prelude::*;
use catga::testing::TestApp;

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

async fn run(app: &mut TestApp) {
    let _ = app.publish(PlaceOrder).await;
}

fn main() {
    let _ = run;
}
