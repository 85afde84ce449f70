//! Local query dispatch and command apply, each next to a direct call of the
//! same handler. Run: `cargo bench -p catga --bench dispatch`.

use std::collections::HashMap;
use std::hint::black_box;

use catga::__private::wire::{EntryKind, Envelope, Machine};
use catga::prelude::*;
use criterion::{Criterion, criterion_group};

#[state(name = "bench.kv")]
#[derive(Default)]
struct Kv {
    map: HashMap<String, u64>,
}

#[command(name = "bench.Put")]
struct Put {
    key: String,
    value: u64,
}

#[query(name = "bench.Get")]
struct Get {
    key: String,
}

#[handler]
fn put(cmd: Put, kv: &mut Kv) -> Option<u64> {
    kv.map.insert(cmd.key, cmd.value)
}

#[handler]
fn get(q: Get, kv: &Kv) -> Option<u64> {
    kv.map.get(&q.key).copied()
}

fn bench(c: &mut Criterion) {
    let mut machine = Machine::new().expect("registry");
    let mut kv = Kv::default();
    for i in 0..1000u64 {
        kv.map.insert(format!("key-{i}"), i);
    }
    let payload = catga::__private::rmp_serde::to_vec_named(&Put {
        key: "key-7".into(),
        value: 1,
    })
    .expect("encode");
    // fill the machine the same way
    for i in 0..1000u64 {
        let p = catga::__private::rmp_serde::to_vec_named(&Put {
            key: format!("key-{i}"),
            value: i,
        })
        .expect("encode");
        machine.apply(i + 1, &env(p, i + 1));
    }

    let mut g = c.benchmark_group("query");
    g.bench_function("direct", |b| {
        b.iter(|| {
            black_box(get(
                Get {
                    key: black_box("key-7").to_string(),
                },
                &kv,
            ))
        })
    });
    g.bench_function("dispatch", |b| {
        b.iter(|| {
            black_box(machine.query(Get {
                key: black_box("key-7").to_string(),
            }))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("command");
    g.bench_function("direct", |b| {
        b.iter(|| {
            black_box(put(
                Put {
                    key: black_box("key-7").to_string(),
                    value: 1,
                },
                &mut kv,
            ))
        })
    });
    let mut seq = 10_000u64;
    g.bench_function("apply", |b| {
        b.iter_batched(
            || {
                seq += 1;
                env(payload.clone(), seq)
            },
            |e| black_box(machine.apply(e.seq, &e)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn env(payload: Vec<u8>, seq: u64) -> Envelope {
    Envelope {
        kind: EntryKind::Command,
        name: "bench.Put".to_string(),
        payload,
        client: 1,
        seq,
        ack_below: seq,
        time_ms: 1,
    }
}

criterion_group!(benches, bench);

/// Times `f` over many iterations (after criterion's own runs) for the
/// ratio lines.
fn per_op(mut f: impl FnMut()) -> f64 {
    let n = 2_000_000u32;
    for _ in 0..n / 10 {
        f();
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn ratios() {
    let mut machine = Machine::new().expect("registry");
    let mut kv = Kv::default();
    for i in 0..1000u64 {
        kv.map.insert(format!("key-{i}"), i);
        let p = catga::__private::rmp_serde::to_vec_named(&Put {
            key: format!("key-{i}"),
            value: i,
        })
        .expect("encode");
        machine.apply(i + 1, &env(p, i + 1));
    }
    let q_direct = per_op(|| {
        black_box(get(
            Get {
                key: black_box("key-7").to_string(),
            },
            &kv,
        ));
    });
    let q_dispatch = per_op(|| {
        let _ = black_box(machine.query(Get {
            key: black_box("key-7").to_string(),
        }));
    });
    let c_direct = per_op(|| {
        black_box(put(
            Put {
                key: black_box("key-7").to_string(),
                value: 1,
            },
            &mut kv,
        ));
    });
    let payload = catga::__private::rmp_serde::to_vec_named(&Put {
        key: "key-7".into(),
        value: 1,
    })
    .expect("encode");
    let mut seq = 10_000u64;
    let mut e = env(payload, seq);
    let c_apply = per_op(|| {
        seq += 1;
        e.seq = seq;
        e.ack_below = seq;
        black_box(machine.apply(seq, &e));
    });
    println!(
        "ratio: query dispatch {q_dispatch:.1} ns vs direct {q_direct:.1} ns = {:.2}x",
        q_dispatch / q_direct
    );
    println!(
        "ratio: command apply {c_apply:.1} ns vs direct {c_direct:.1} ns = {:.2}x",
        c_apply / c_direct
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
