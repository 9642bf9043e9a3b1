//! Task throughput and round-trip latency, each beside its ceiling.
//!
//! - `map_100k`: `map` of a trivial function over 100 000 items on 2
//!   workers at chunk sizes 1, 16, 256 and the default, against the same
//!   map on a `rayon` pool of 2 threads (no processes, no pipes, no
//!   serialisation) at the same job sizes.
//! - `round_trip`: one `apply` against a raw pipe ping-pong between two
//!   processes, on both cores (the default) and with everything pinned to
//!   one core (`cpu0/`), where no idle vCPU has to be woken; and, to show
//!   what sleeping and waking cost across CPUs, a ping-pong where both ends
//!   busy-poll instead of sleeping.
//!
//! Run: `cargo bench -p forkpool-benches --bench tasks`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::Pool;
use forkpool_benches::ceiling::PingPong;
use forkpool_benches::tasks::{Chunks, RayonMap, inc, time_map};
use forkpool_benches::timing::OneCpu;

const ITEMS: u64 = 100_000;
const PROCESSES: usize = 2;

fn map_throughput(c: &mut Criterion) {
    let pool = Pool::new(PROCESSES).unwrap();
    let rayon = RayonMap::new(PROCESSES);
    let items: Vec<u64> = (0..ITEMS).collect();
    let mut g = c.benchmark_group("map_100k");
    g.throughput(Throughput::Elements(ITEMS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for chunks in [
        Chunks::Size(1),
        Chunks::Size(16),
        Chunks::Size(256),
        Chunks::Default,
    ] {
        let label = chunks.label();
        g.bench_function(BenchmarkId::new("rayon_2_threads (ceiling)", &label), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rayon.time_map(&items, chunks)).sum())
        });
        g.bench_function(BenchmarkId::new("forkpool_2_processes", &label), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| time_map(&pool, &items, chunks)).sum())
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for one_cpu in [false, true] {
        let prefix = if one_cpu { "cpu0/" } else { "" };
        // Pinned before the helper and the pool start: they inherit it.
        let pin = one_cpu.then(|| OneCpu::pin().unwrap());
        let ping = PingPong::start();
        g.bench_function(format!("{prefix}raw_pipe_ping_pong (ceiling)"), |b| {
            b.iter(|| ping.round_trip())
        });
        drop(ping);
        if !one_cpu {
            let spin = PingPong::start_spinning();
            g.bench_function(
                "raw_pipe_ping_pong_busy_polling (no sleep, not a way to run)",
                |b| b.iter(|| spin.round_trip()),
            );
        }
        let pool = Pool::new(PROCESSES).unwrap();
        g.bench_function(format!("{prefix}apply_u64"), |b| {
            b.iter(|| black_box(pool.apply(inc, black_box(41)).unwrap()))
        });
        drop(pool);
        drop(pin);
    }
    g.finish();
}

criterion_group!(benches, round_trip, map_throughput);
criterion_main!(benches);
