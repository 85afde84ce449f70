use catga::prelude::*;
use catga::testing::TestApp;

#[event]
pub struct OrderPlaced;

async fn run(app: &mut TestApp) {
    let _ = app.send(OrderPlaced).await;
}

fn main() {
    let _ = run;
}
