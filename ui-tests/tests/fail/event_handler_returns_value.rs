use catga::prelude::*;

pub mod events {
    use catga::prelude::*;

    #[event]
    pub struct OrderPlaced {
        pub id: u64,
    }
}

#[handler]
fn on_order_placed(e: events::OrderPlaced) -> u64 {
    e.id
}

fn main() {}
