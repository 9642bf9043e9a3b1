//! Shared-array fills and random fills, each beside its ceiling.
//!
//! - `shared_fill_256MiB`: `memset` of a private, already-mapped buffer by
//!   1, 2 and 4 threads (the ceiling); the pool's workers filling a shared
//!   array they have already mapped (`warm`, the steady state: their
//!   initializer pre-faulted it); and a first fill (`cold`: creating the
//!   array, then fresh workers pre-faulting and filling their rows).
//! - `random_fill_1GiB`: one ChaCha8 stream per row, serially into a new
//!   private array (`vec!`, as `np.empty`), and by 1 and 2 workers into a
//!   new shared array; the ceiling is the generation alone on 1 and 2 threads
//!   into memory already mapped.
//!
//! Run: `cargo bench -p forkpool-benches --bench fill`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use forkpool_benches::arrays::{WarmFill, cold_fill};
use forkpool_benches::ceiling::{faulted_buffer, memset};
use forkpool_benches::random;

const FILL: usize = 256 << 20;
const RANDOM: usize = 1 << 30;
const SEED: u64 = 42;

fn shared_fill(c: &mut Criterion) {
    let mut g = c.benchmark_group("shared_fill_256MiB");
    g.throughput(Throughput::Bytes(FILL as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    {
        let mut buf = faulted_buffer(FILL);
        for threads in [1usize, 2, 4] {
            g.bench_function(BenchmarkId::new("memset (ceiling)", threads), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| memset(&mut buf, 7, threads)).sum())
            });
        }
        // Freed before any pool starts: forks would copy its page tables.
    }
    for processes in [1usize, 2, 4] {
        let mut warm = WarmFill::new(FILL, processes);
        g.bench_function(BenchmarkId::new("forkpool_warm", processes), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| warm.run()).sum())
        });
        drop(warm);
        g.bench_function(
            BenchmarkId::new("forkpool_cold (create + first fill)", processes),
            |b| b.iter_custom(|iters| (0..iters).map(|_| cold_fill(FILL, processes)).sum()),
        );
    }
    g.finish();
}

fn random_fill(c: &mut Criterion) {
    let mut g = c.benchmark_group("random_fill_1GiB");
    g.throughput(Throughput::Bytes(RANDOM as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.bench_function("serial_new_private_array", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (took, data) = random::serial(RANDOM, SEED);
                    black_box(data);
                    took
                })
                .sum()
        })
    });
    for processes in [1usize, 2] {
        g.bench_function(
            BenchmarkId::new("forkpool_new_shared_array", processes),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let (took, array) = random::parallel(RANDOM, processes, SEED);
                            black_box(array);
                            took
                        })
                        .sum()
                })
            },
        );
    }
    {
        let mut mapped = vec![0f64; RANDOM / 8];
        random::threads_on_mapped(&mut mapped, 1, SEED);
        for threads in [1usize, 2] {
            g.bench_function(
                BenchmarkId::new("generation_only_threads (ceiling)", threads),
                |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| random::threads_on_mapped(&mut mapped, threads, SEED))
                            .sum()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, shared_fill, random_fill);
criterion_main!(benches);
