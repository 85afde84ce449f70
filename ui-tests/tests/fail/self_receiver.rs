use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[command]
pub struct PlaceOrder;

impl Shop {
    #[handler]
    fn place_order(&mut self, _cmd: PlaceOrder) -> u64 {
        self.orders += 1;
        self.orders
    }
}

fn main() {}
