//! `crate = "..."` for a renamed dependency: generated code names the
//! runtime through the given path.

extern crate catga as my_catga;

use my_catga::prelude::*;

#[state(crate = "my_catga", name = "ui.renamed.counter")]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[command(crate = "::my_catga")]
pub struct Add(pub u64);

#[query(crate = "my_catga", linearizable)]
pub struct Get;

#[event(crate = "my_catga")]
pub struct Added;

#[handler(crate = "my_catga")]
fn add(cmd: Add, c: &mut Counter, ctx: &mut CommandContext) -> u64 {
    c.n += cmd.0;
    ctx.publish(Added);
    c.n
}

#[handler(crate = "my_catga")]
fn get(_: Get, c: &Counter) -> u64 {
    c.n
}

#[handler(crate = "my_catga")]
fn on_added(_: Added) {}

#[tokio::main]
async fn main() {
    let mut app = my_catga::testing::TestApp::new().unwrap();
    assert_eq!(app.send(Add(2)).await.unwrap(), 2);
    assert_eq!(app.send(Get).await.unwrap(), 2);
}
