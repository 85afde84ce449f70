use catga::prelude::*;

#[event]
pub struct OrderPlaced {
    pub id: u64,
}

pub struct Audit;

impl Audit {
    #[handler]
    fn on_order_placed(e: OrderPlaced) {
        let _ = e.id;
    }
}

fn main() {}
