//! criterion benchmarks of the Rust core without Python: the bytes path of an append (with
//! and without line checksums, and their ratio), ULID generation, LRU get/put.
//! Run: cargo bench --bench core
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use _core::{encode_json_bytes, next_ulid, Config, QueueCore, TsFormatter, TtlLru};

const EVENT: &[u8] = br#"{"activity":"called_tool","customer":"ana@example.com","feature_json":{"tool":"get_context","latency_ms":0.08,"outcome":"ok"},"_session_id":"s-42"}"#;

fn config(checksums: bool) -> Config {
    Config::new(
        16 * 1024 * 1024,
        60.0,
        u64::MAX / 2,
        Duration::from_millis(50),
        1 << 20,
    )
    .unwrap()
    .with_checksums(checksums)
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    let mut ts = TsFormatter::default();
    let mut buf = Vec::with_capacity(4096);
    g.bench_function("encode_bytes_event", |b| {
        b.iter(|| {
            buf.clear();
            black_box(encode_json_bytes(black_box(EVENT), &mut buf, &mut ts, 1 << 20).unwrap())
        })
    });
    for (name, checksums) in [("", true), ("_no_checksum", false)] {
        let q = QueueCore::open(&dir.path().join(name), config(checksums)).unwrap();
        g.bench_function(format!("append_bytes_event{name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode_json_bytes(black_box(EVENT), &mut buf, &mut ts, 1 << 20).unwrap();
                black_box(q.append(&buf, 1).unwrap())
            })
        });
        q.close().unwrap();
    }
    let mut batch = Vec::new();
    for _ in 0..1000 {
        encode_json_bytes(EVENT, &mut batch, &mut ts, 1 << 20).unwrap();
    }
    g.throughput(Throughput::Elements(1000));
    for (name, checksums) in [("", true), ("_no_checksum", false)] {
        let q = QueueCore::open(&dir.path().join(format!("b{name}")), config(checksums)).unwrap();
        g.bench_function(format!("append_1000_encoded_lines{name}"), |b| {
            b.iter(|| black_box(q.append(&batch, 1000).unwrap()))
        });
        q.close().unwrap();
    }
    g.finish();
}

/// Append time with checksums over without, measured interleaved in this run (`ROUNDS`
/// rounds of `ROUND` single-event appends each way, each into a fresh queue, so page faults
/// on new segment pages count; the median of the rounds' ratios), as printed.
/// Run alone: cargo bench --bench core -- checksum_ratio
fn checksum_ratio(_: &mut Criterion) {
    const ROUNDS: usize = 61;
    const ROUND: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = TsFormatter::default();
    let mut buf = Vec::with_capacity(4096);
    let mut round = |q: &QueueCore| {
        let t = Instant::now();
        for _ in 0..ROUND {
            buf.clear();
            encode_json_bytes(black_box(EVENT), &mut buf, &mut ts, 1 << 20).unwrap();
            black_box(q.append(&buf, 1).unwrap());
        }
        t.elapsed().as_secs_f64() / ROUND as f64
    };
    let mut ratios = Vec::new();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let a = QueueCore::open(&dir.path().join(format!("c{i}")), config(true)).unwrap();
        let b = QueueCore::open(&dir.path().join(format!("n{i}")), config(false)).unwrap();
        let (x, y) = if i % 2 == 0 {
            let x = round(&a);
            (x, round(&b))
        } else {
            let y = round(&b);
            (round(&a), y)
        };
        a.close().unwrap();
        b.close().unwrap();
        with.push(x);
        without.push(y);
        ratios.push(x / y);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "append_bytes_event with checksums {:.0} ns, without {:.0} ns (medians): \
         ratio {:.3} (median of {ROUNDS} interleaved rounds of {ROUND}); \
         best rounds {:.0} ns / {:.0} ns = {:.3}",
        median(&mut with.clone()) * 1e9,
        median(&mut without.clone()) * 1e9,
        median(&mut ratios),
        best(&with) * 1e9,
        best(&without) * 1e9,
        best(&with) / best(&without),
    );
}

fn ulid(c: &mut Criterion) {
    c.bench_function("ulid", |b| b.iter(|| black_box(next_ulid())));
    c.bench_function("ulid_to_string", |b| {
        b.iter(|| black_box(next_ulid().to_string()))
    });
}

fn lru(c: &mut Criterion) {
    let cache: TtlLru<String, u64> = TtlLru::new(NonZeroUsize::new(10_000).unwrap(), None);
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("customer-{i}@example.com"))
        .collect();
    for (i, k) in keys.iter().take(10_000).enumerate() {
        cache.put(k.clone(), i as u64);
    }
    let mut i = 0usize;
    c.bench_function("lru_get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % 10_000;
            black_box(cache.get(&keys[i]))
        })
    });
    c.bench_function("lru_put_evicting", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % 20_000;
                keys[i].clone()
            },
            |k| black_box(cache.put(k, 1)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, append, checksum_ratio, ulid, lru);
criterion_main!(benches);
