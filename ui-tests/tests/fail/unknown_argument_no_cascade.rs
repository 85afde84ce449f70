// A typo in an argument is one error: the type is still a command, so its
// handler and the code that sends it compile.
use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command(nmae = "shop.PlaceOrder")]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop) -> u64 {
    shop.orders += 1;
    shop.orders
}

async fn run(app: &mut catga::testing::TestApp) -> u64 {
    app.send(PlaceOrder).await.unwrap()
}

fn main() {
    let _ = run;
}
