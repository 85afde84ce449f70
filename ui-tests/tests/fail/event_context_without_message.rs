use catga::prelude::*;

#[handler]
async fn on_anything(ctx: EventContext) {
    let _ = ctx;
}

fn main() {}
