//! Payloads through the pool: `apply` of a function that takes a `Vec<u8>`
//! and answers its length, with 4 KiB, 1 MiB and 64 MiB arguments, against
//! the same bytes written through a raw pipe (of the pool's 64 KiB size) to
//! a child that reads them, and against `memcpy` of the same size in one
//! process (the bandwidth any copy is bounded by). An experiment: the raw
//! pipe resized to 1 MiB (`F_SETPIPE_SZ`), so the reader is woken 16 times
//! less often; and the argument as a byte string (`Bytes`, as
//! `serde_bytes::ByteBuf`: one copy) rather than a `Vec<u8>` (which serde
//! encodes and decodes one byte at a time).
//!
//! Run: `cargo bench -p forkpool-benches --bench payload`.

use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::Pool;
use forkpool_benches::ceiling::{PipeSink, faulted_buffer, memcpy};
use forkpool_benches::tasks::{Bytes, byte_len, bytes_len};

fn payload(c: &mut Criterion) {
    let pool = Pool::new(2).unwrap();
    let sink = PipeSink::start();
    let big_sink = PipeSink::start_with_pipe_size(Some(1 << 20));
    let mut g = c.benchmark_group("payload");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (label, size) in [
        ("4KiB", 4usize << 10),
        ("1MiB", 1 << 20),
        ("64MiB", 64 << 20),
    ] {
        if size >= 64 << 20 {
            g.sample_size(10);
        }
        g.throughput(Throughput::Bytes(size as u64));
        let src = faulted_buffer(size);
        let mut dst = faulted_buffer(size);
        g.bench_function(BenchmarkId::new("memcpy_1_thread (ceiling)", label), |b| {
            b.iter(|| memcpy(&mut dst, &src, 1))
        });
        g.bench_function(BenchmarkId::new("raw_pipe (ceiling)", label), |b| {
            b.iter(|| sink.send(&src))
        });
        g.bench_function(
            BenchmarkId::new("raw_pipe_1MiB_buffer (experiment)", label),
            |b| b.iter(|| big_sink.send(&src)),
        );
        g.bench_function(BenchmarkId::new("forkpool_apply", label), |b| {
            b.iter_batched(
                || src.clone(),
                |arg| pool.apply(byte_len, arg).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Kept apart so the groups above read as one table.
fn payload_as_bytes(c: &mut Criterion) {
    let pool = Pool::new(2).unwrap();
    let mut g = c.benchmark_group("payload");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (label, size) in [
        ("4KiB", 4usize << 10),
        ("1MiB", 1 << 20),
        ("64MiB", 64 << 20),
    ] {
        if size >= 64 << 20 {
            g.sample_size(10);
        }
        g.throughput(Throughput::Bytes(size as u64));
        let src = Bytes(vec![1u8; size]);
        g.bench_function(
            BenchmarkId::new("forkpool_apply_as_bytes (experiment)", label),
            |b| {
                b.iter_batched(
                    || src.clone(),
                    |arg| pool.apply(bytes_len, arg).unwrap(),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, payload, payload_as_bytes);
criterion_main!(benches);
