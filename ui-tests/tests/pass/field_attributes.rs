//! Fields keep their serde attributes and behaviour: a missing `Option`
//! field still decodes as `None`, `skip`/`with` fields are left to serde.

use std::time::Instant;

use catga::prelude::*;

#[derive(Serialize)]
#[serde(crate = "catga::serde")]
pub struct PlaceOrderV1 {
    pub qty: u32,
}

#[command]
pub struct PlaceOrder {
    pub qty: u32,
    pub note: Option<String>,
    #[serde(rename = "c")]
    pub coupon: Option<u32>,
    #[serde(skip)]
    pub seen: Option<Instant>,
    #[serde(default = "ten")]
    pub limit: u32,
    pub next: Option<Box<Self>>,
}

fn ten() -> u32 {
    10
}

#[event]
pub enum Changed {
    Placed(u32),
    Cancelled { reason: Option<String> },
    Nothing,
}

fn main() {
    let old = catga::__private::rmp_serde::to_vec_named(&PlaceOrderV1 { qty: 3 }).unwrap();
    let new: PlaceOrder = catga::__private::rmp_serde::from_slice(&old).unwrap();
    assert_eq!(
        (new.qty, new.note, new.coupon, new.limit),
        (3, None, None, 10)
    );
    assert!(new.seen.is_none() && new.next.is_none());
    let bytes =
        catga::__private::rmp_serde::to_vec_named(&Changed::Cancelled { reason: None }).unwrap();
    let back: Changed = catga::__private::rmp_serde::from_slice(&bytes).unwrap();
    assert!(matches!(back, Changed::Cancelled { reason: None }));
    let bytes = catga::__private::rmp_serde::to_vec_named(&Changed::Placed(4)).unwrap();
    assert!(matches!(
        catga::__private::rmp_serde::from_slice(&bytes).unwrap(),
        Changed::Placed(4)
    ));
}
