//! Handlers exercised through the in-process `TestApp` harness.

use catga::prelude::*;
use catga::testing::TestApp;

#[state(name = "ui.counter")]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[command]
pub struct Add {
    pub by: u64,
}

#[query]
pub struct Get;

#[query]
pub struct Double(pub u64);

#[event]
#[derive(Debug, PartialEq)]
pub struct Added {
    pub total: u64,
}

#[handler]
fn add(cmd: Add, c: &mut Counter, ctx: &mut CommandContext) -> u64 {
    c.n += cmd.by;
    ctx.publish(Added { total: c.n });
    c.n
}

#[handler]
fn get(_: Get, c: &Counter) -> u64 {
    c.n
}

#[handler]
async fn double(q: Double) -> u64 {
    q.0 * 2
}

#[tokio::main]
async fn main() {
    let mut app = TestApp::new().unwrap();
    assert_eq!(app.send(Add { by: 2 }).await.unwrap(), 2);
    assert_eq!(app.send(Add { by: 3 }).await.unwrap(), 5);
    assert_eq!(app.send(Get).await.unwrap(), 5);
    assert_eq!(app.send(Double(21)).await.unwrap(), 42);
    assert_eq!(
        app.events::<Added>(),
        vec![Added { total: 2 }, Added { total: 5 }]
    );
    assert_eq!(app.state::<Counter>().unwrap().n, 5);

    let snap = app.snapshot().unwrap();
    app.send(Add { by: 10 }).await.unwrap();
    app.restore(&snap).unwrap();
    assert_eq!(app.send(Get).await.unwrap(), 5);
}
