//! A message of the user's own may be called `EventContext`: the macros
//! decide what a parameter is by its type, never by its name.

mod app {
    use catga::prelude::*;

    #[event]
    pub struct EventContext {
        pub id: u64,
    }

    #[handler]
    pub fn on_event_context(e: EventContext, ctx: catga::EventContext) {
        let _ = (e.id, ctx.log_index());
    }
}

fn main() {
    let name = <app::EventContext as catga::Message>::NAME;
    assert!(name.ends_with("app::EventContext"), "{name}");
}
