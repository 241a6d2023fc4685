//! criterion benchmarks of the Rust core without Python: the bytes path of an append (with
//! and without line checksums, and their ratio), appends by memcpy against `pwrite` by
//! size, ULID generation, LRU get/put.
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
    if !selected("checksum_ratio") {
        return;
    }
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

/// The appending thread's CPU time per byte through the map against through `pwrite`, for
/// batches of 1 to 1,024 lines (~200 bytes each): the median, over `ROUNDS` interleaved
/// rounds, of the ratio map / pwrite, each round appending `ROUND_BYTES` into a fresh
/// segment with the default background fdatasync (every 50 ms). Picks `PWRITE_FROM`.
/// Run alone: cargo bench --bench core -- append_path
fn append_path(_: &mut Criterion) {
    if !selected("append_path") {
        return;
    }
    const ROUNDS: usize = 15;
    const ROUND_BYTES: usize = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut ts = TsFormatter::default();
    let thread_cpu = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    };
    let mut k = 0;
    for lines in [1, 4, 16, 32, 64, 128, 256, 1024] {
        let mut batch = Vec::new();
        for _ in 0..lines {
            encode_json_bytes(EVENT, &mut batch, &mut ts, 1 << 20).unwrap();
        }
        // (cpu, wall) seconds per byte of one round, through the map or through pwrite.
        let mut round = |pwrite: bool| {
            k += 1;
            let cfg = config(true).with_pwrite_from(if pwrite { 0 } else { usize::MAX });
            let q = QueueCore::open(&dir.path().join(k.to_string()), cfg).unwrap();
            let n = ROUND_BYTES / batch.len();
            let (c, w) = (thread_cpu(), Instant::now());
            for _ in 0..n {
                black_box(q.append(&batch, lines).unwrap());
            }
            let per = (n * batch.len()) as f64;
            let r = ((thread_cpu() - c) / per, w.elapsed().as_secs_f64() / per);
            q.close().unwrap();
            std::fs::remove_dir_all(dir.path().join(k.to_string())).unwrap();
            r
        };
        let (mut cpu, mut wall, mut map_cpu, mut pw_cpu) = (vec![], vec![], vec![], vec![]);
        for i in 0..ROUNDS {
            let (m, p) = if i % 2 == 0 {
                let m = round(false);
                (m, round(true))
            } else {
                let p = round(true);
                (round(false), p)
            };
            cpu.push(m.0 / p.0);
            wall.push(m.1 / p.1);
            map_cpu.push(m.0);
            pw_cpu.push(p.0);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "append_path {lines} lines ({} bytes): map {:.0} MB/s, pwrite {:.0} MB/s of CPU \
             time; map / pwrite: CPU time {:.2}x, wall {:.2}x (medians of {ROUNDS} rounds)",
            batch.len(),
            1e-6 / median(map_cpu),
            1e-6 / median(pw_cpu),
            median(cpu),
            median(wall),
        );
    }
}

/// Whether the command line's filter (criterion's, `cargo bench -- FILTER`) picks `name`,
/// for the measurements that print instead of going through criterion.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
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

criterion_group!(benches, append, checksum_ratio, append_path, ulid, lru);
criterion_main!(benches);
