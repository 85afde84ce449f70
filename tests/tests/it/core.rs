//! The state machine core through the testing harness: commands, queries,
//! events, exactly-once, panics, snapshots.

use std::sync::atomic::Ordering;

use catga::__private::wire::{EntryKind, Envelope};
use catga::testing::TestApp;
use catga::{ApplyError, Error, Message};
use catga_tests::*;

#[tokio::test]
async fn command_query_and_events() {
    let mut app = TestApp::new().unwrap();
    assert_eq!(
        app.send(Restock {
            sku: "apple".into(),
            qty: 3
        })
        .await
        .unwrap(),
        3
    );
    let id = app
        .send(PlaceOrder {
            sku: "apple".into(),
            qty: 2,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 2, "the order id is the log index");
    assert_eq!(
        app.send(GetStock {
            sku: "apple".into()
        })
        .await
        .unwrap(),
        Some(1)
    );
    assert_eq!(app.send(CountOrders).await.unwrap(), 1);
    assert_eq!(
        app.events::<OrderPlaced>(),
        vec![OrderPlaced {
            id: 2,
            sku: "apple".into()
        }]
    );
    // a handler error is a value, the same as the handler returned
    let err = app
        .send(PlaceOrder {
            sku: "apple".into(),
            qty: 5,
        })
        .await
        .unwrap();
    assert_eq!(err, Err(ShopError::OutOfStock { left: 1 }));
    assert_eq!(
        app.send(PlaceOrder {
            sku: "pear".into(),
            qty: 1
        })
        .await
        .unwrap(),
        Err(ShopError::UnknownSku)
    );
    assert_eq!(app.send(Echo("hi".into())).await.unwrap(), "hi");
    assert_eq!(
        app.events::<OrderPlaced>().len(),
        1,
        "failed orders publish nothing"
    );
}

#[tokio::test]
async fn event_handlers_run_sync_and_async() {
    let mut app = TestApp::new().unwrap();
    let before = PINGS_SEEN.load(Ordering::SeqCst);
    app.publish(Ping { n: 1000 }).await.unwrap();
    assert!(PINGS_SEEN.load(Ordering::SeqCst) >= before + 1000);
    let orders = ORDERS_SEEN.load(Ordering::SeqCst);
    app.send(Restock {
        sku: "a".into(),
        qty: 1,
    })
    .await
    .unwrap();
    app.send(PlaceOrder {
        sku: "a".into(),
        qty: 1,
    })
    .await
    .unwrap()
    .unwrap();
    assert!(ORDERS_SEEN.load(Ordering::SeqCst) > orders);
    assert_eq!(app.events::<Ping>(), vec![Ping { n: 1000 }]);
}

fn envelope(name: &str, payload: Vec<u8>, seq: u64, ack_below: u64) -> Envelope {
    Envelope {
        kind: EntryKind::Command,
        name: name.into(),
        payload,
        client: 42,
        seq,
        ack_below,
        time_ms: 1,
        key: None,
    }
}

#[tokio::test]
async fn a_replayed_request_is_applied_once() {
    let mut app = TestApp::new().unwrap();
    let payload = catga::__private::rmp_serde::to_vec_named(&Restock {
        sku: "x".into(),
        qty: 5,
    })
    .unwrap();
    let first = app
        .apply(envelope(Restock::NAME, payload.clone(), 7, 7))
        .await;
    let again = app
        .apply(envelope(Restock::NAME, payload.clone(), 7, 7))
        .await;
    assert_eq!(first.response, again.response);
    assert_eq!(
        app.send(GetStock { sku: "x".into() }).await.unwrap(),
        Some(5)
    );
    // once acknowledged, a replay is refused, not applied
    app.apply(envelope(Restock::NAME, payload.clone(), 8, 8))
        .await;
    let stale = app.apply(envelope(Restock::NAME, payload, 7, 8)).await;
    assert!(matches!(
        stale.response,
        Err(ApplyError::Stale { client: 42, seq: 7 })
    ));
    assert_eq!(
        app.send(GetStock { sku: "x".into() }).await.unwrap(),
        Some(10)
    );
}

#[tokio::test]
async fn bad_entries_are_errors_not_crashes() {
    let mut app = TestApp::new().unwrap();
    let unknown = app.apply(envelope("no.such.Command", vec![], 1, 1)).await;
    assert!(matches!(
        unknown.response,
        Err(ApplyError::UnknownMessage { .. })
    ));
    let garbage = app
        .apply(envelope(Restock::NAME, vec![0xc1, 0xff, 0x00], 2, 2))
        .await;
    assert!(matches!(garbage.response, Err(ApplyError::Decode { .. })));
    // an event entry that names a command is refused, not delivered
    let mut as_event = envelope(Restock::NAME, vec![0x80], 3, 3);
    as_event.kind = EntryKind::Event;
    let refused = app.apply(as_event).await;
    assert!(matches!(
        refused.response,
        Err(ApplyError::UnknownMessage { .. })
    ));
    assert!(refused.events.is_empty());
    // the node goes on
    assert_eq!(
        app.send(Restock {
            sku: "y".into(),
            qty: 1
        })
        .await
        .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_panicking_handler_returns_an_error_and_the_app_goes_on() {
    let mut app = TestApp::new().unwrap();
    let err = app.send(Explode { touch_first: true }).await.unwrap_err();
    match err {
        Error::Apply(ApplyError::Panicked { handler, message }) => {
            assert!(handler.ends_with("explode"), "{handler}");
            assert_eq!(message, "boom at 1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        app.events::<Ping>().is_empty(),
        "a panicking handler publishes nothing"
    );
    assert_eq!(
        app.send(Restock {
            sku: "z".into(),
            qty: 2
        })
        .await
        .unwrap(),
        2
    );
    // what the handler changed before panicking stays, identically on every replica
    assert_eq!(
        app.send(GetStock {
            sku: "exploded".into()
        })
        .await
        .unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn snapshot_and_restore_round_trip() {
    let mut app = TestApp::new().unwrap();
    app.send(Restock {
        sku: "s".into(),
        qty: 4,
    })
    .await
    .unwrap();
    app.send(PlaceOrder {
        sku: "s".into(),
        qty: 1,
    })
    .await
    .unwrap()
    .unwrap();
    let snap = app.snapshot().unwrap();
    let shop_before = app.state::<Shop>().unwrap().clone();

    let mut other = TestApp::new().unwrap();
    other.restore(&snap).unwrap();
    assert_eq!(other.state::<Shop>().unwrap(), &shop_before);
    assert_eq!(other.last_applied(), 2);
    assert_eq!(
        other.snapshot().unwrap(),
        snap,
        "restore then snapshot is the identity"
    );

    // the dedup table travels with the snapshot
    let payload = catga::__private::rmp_serde::to_vec_named(&Restock {
        sku: "s".into(),
        qty: 1,
    })
    .unwrap();
    let a = app
        .apply(envelope(Restock::NAME, payload.clone(), 1, 1))
        .await;
    let snap2 = app.snapshot().unwrap();
    other.restore(&snap2).unwrap();
    let b = other.apply(envelope(Restock::NAME, payload, 1, 1)).await;
    assert_eq!(a.response, b.response);
    assert_eq!(other.state::<Shop>(), app.state::<Shop>());

    // a corrupt snapshot changes nothing
    assert!(other.restore(&snap2[..snap2.len() / 2]).is_err());
    assert_eq!(other.state::<Shop>(), app.state::<Shop>());
}

#[test]
fn wire_and_state_names_are_stable_and_visible() {
    assert_eq!(Restock::NAME, "tests.Restock");
    assert_eq!(<OrderPlaced as Message>::KIND, catga::MessageKind::Event);
    let names = catga::testing::state_names().unwrap();
    assert!(
        names
            .iter()
            .any(|(n, t)| n == "tests.shop" && t.ends_with("Shop"))
    );
    assert_eq!(
        <CountOrders as catga::Query>::CONSISTENCY,
        catga::Consistency::Linearizable
    );
}

#[test]
fn messages_encode_as_maps() {
    let bytes = catga::__private::rmp_serde::to_vec_named(&Restock {
        sku: "k".into(),
        qty: 1,
    })
    .unwrap();
    // a fixmap with 2 entries whose first key is the field name
    assert_eq!(bytes[0], 0x82);
    assert_eq!(&bytes[2..5], b"sku");
}
