//! `Buffer<f64>` by `apply`, there and back, beside the ceilings of the
//! same run: a `memcpy` into memory already faulted in, and a copy into a
//! fresh allocation.
//!
//! Three ways of counting a round trip:
//!
//! - `apply_buffer_echo`: a buffer made before the clock starts is sent and
//!   comes back (the transport alone: descriptors, mappings, frames);
//! - `apply_buffer_from_vec`: the buffer is made from a `Vec<f64>` inside
//!   the clock (the one copy by-value costs), then sent and back, read in
//!   place;
//! - `apply_buffer_vec_to_vec`: as the previous, and the answer copied out
//!   into a new `Vec<f64>` (two copies: what `apply` of a `Vec` must do at
//!   least).
//!
//! Run: `cargo bench -p forkpool --bench buffer`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::{Buffer, Pool};

fn echo(b: Buffer<f64>) -> Buffer<f64> {
    b
}

const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (1 << 20, "1MiB"), (64 << 20, "64MiB")];

fn buffer_round_trip(c: &mut Criterion) {
    let pool = Pool::new(1).unwrap();
    let mut g = c.benchmark_group("buffer_round_trip");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (len, name) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let src = vec![1.5f64; len / 8];
        let mut dst = vec![2.5f64; len / 8];
        g.bench_function(BenchmarkId::new("ceiling_memcpy", name), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
        g.bench_function(BenchmarkId::new("ceiling_copy_to_new_vec", name), |b| {
            b.iter(|| black_box(black_box(&src).to_vec()))
        });
        let made = Buffer::from_slice(&src).unwrap();
        g.bench_function(BenchmarkId::new("apply_buffer_echo", name), |b| {
            b.iter(|| black_box(pool.apply(echo, made.clone()).unwrap()))
        });
        g.bench_function(BenchmarkId::new("apply_buffer_from_vec", name), |b| {
            b.iter(|| {
                let sent = Buffer::from_slice(black_box(&src)).unwrap();
                black_box(pool.apply(echo, sent).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("apply_buffer_vec_to_vec", name), |b| {
            b.iter(|| {
                let sent = Buffer::from_slice(black_box(&src)).unwrap();
                black_box(pool.apply(echo, sent).unwrap().to_vec())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, buffer_round_trip);
criterion_main!(benches);
