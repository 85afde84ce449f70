use catga::prelude::*;
use catga::testing::TestApp;

#[command]
pub struct PlaceOrder;

async fn run(app: &mut TestApp) {
    let _ = app.send(PlaceOrder).await;
}

fn main() {
    let _ = run;
}
