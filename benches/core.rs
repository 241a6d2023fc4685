//! criterion benchmarks of the Rust core without Python: the bytes path of an append,
//! ULID generation, LRU get/put. Run: cargo bench --bench core
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use _core::{encode_json_bytes, next_ulid, Config, QueueCore, TsFormatter, TtlLru};

const EVENT: &[u8] = br#"{"activity":"called_tool","customer":"ana@example.com","feature_json":{"tool":"get_context","latency_ms":0.08,"outcome":"ok"},"_session_id":"s-42"}"#;

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::new(
        16 * 1024 * 1024,
        60.0,
        u64::MAX / 2,
        Duration::from_millis(50),
        1 << 20,
    )
    .unwrap();
    let q = QueueCore::open(dir.path(), cfg).unwrap();
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
    g.bench_function("append_bytes_event", |b| {
        b.iter(|| {
            buf.clear();
            encode_json_bytes(black_box(EVENT), &mut buf, &mut ts, 1 << 20).unwrap();
            black_box(q.append(&buf, 1).unwrap())
        })
    });
    let mut batch = Vec::new();
    for _ in 0..1000 {
        encode_json_bytes(EVENT, &mut batch, &mut ts, 1 << 20).unwrap();
    }
    g.throughput(Throughput::Elements(1000));
    g.bench_function("append_1000_encoded_lines", |b| {
        b.iter(|| black_box(q.append(&batch, 1000).unwrap()))
    });
    g.finish();
    q.close().unwrap();
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

criterion_group!(benches, append, ulid, lru);
criterion_main!(benches);
