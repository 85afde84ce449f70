use catga::prelude::*;

#[state]
#[derive(Default)]
pub struct Shop {
    orders: u64,
}

#[derive(Debug)]
pub enum ShopError {
    SoldOut,
}

#[command]
pub struct PlaceOrder;

#[handler]
fn place_order(_cmd: PlaceOrder, shop: &mut Shop) -> Result<u64, ShopError> {
    if shop.orders > 10 {
        return Err(ShopError::SoldOut);
    }
    shop.orders += 1;
    Ok(shop.orders)
}

fn main() {}
