use catga::testing::TestApp;

pub struct NotAMessage;

async fn run(app: &mut TestApp) {
    let _ = app.send(NotAMessage).await;
}

fn main() {
    let _ = run;
}
