//! Shared-array fills and random fills, each beside its ceiling.
//!
//! - `shared_fill_256MiB`: `memset` of a private, already-mapped buffer by
//!   1, 2 and 4 threads (the ceiling); the pool's workers filling a shared
//!   array they have already mapped (`warm`, the steady state: their
//!   initializer pre-faulted it); and a first fill (`cold`: creating the
//!   array, then fresh workers pre-faulting and filling their rows).
//! - `random_fill_1GiB`: one Philox4x32-10 stream per row. End to end: serially
//!   into a new private array (`vec!`, as `np.empty`), and by 2 workers into
//!   a new shared array (created, then filled), against 2 threads filling a
//!   new private array. Into an existing shared array (allocated, not yet
//!   mapped by the workers): by 1 and 2 fresh workers, against the
//!   generation alone on 1 and 2 threads into memory already mapped.
//!
//! Experiments (what would close the gaps): 1-thread fills with ordinary
//! and with non-temporal stores; the 2-process random fill into a shared
//! array that is not reserved up front, each worker allocating its own rows.
//!
//! Run: `cargo bench -p forkpool-benches --bench fill`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use forkpool_benches::arrays::{WarmFill, cold_fill};
use forkpool_benches::ceiling::{faulted_buffer, memset};
use forkpool_benches::experiments::{self, fill_nontemporal, fill_regular};
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
        // SAFETY: any bytes are a valid `f64`; `align_to_mut` keeps only the
        // aligned middle (all of it: the allocator aligns to 16 bytes); the
        // buffer is exclusive here.
        let (_, doubles, _) = unsafe { buf.align_to_mut::<f64>() };
        g.bench_function("ordinary_stores_1_thread (experiment)", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fill_regular(doubles, 2.0)).sum())
        });
        g.bench_function("non_temporal_stores_1_thread (experiment)", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fill_nontemporal(doubles, 3.0)).sum())
        });
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
    g.bench_function("forkpool_new_shared_array_2_processes", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (took, array) = random::parallel(RANDOM, 2, SEED);
                    black_box(array);
                    took
                })
                .sum()
        })
    });
    g.bench_function("threads_new_private_array_2_threads (ceiling)", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| random::threads_on_new(RANDOM, 2, SEED))
                .sum()
        })
    });
    for processes in [1usize, 2] {
        g.bench_function(
            BenchmarkId::new("forkpool_existing_shared_array", processes),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| random::existing(RANDOM, processes, SEED))
                        .sum()
                })
            },
        );
    }
    g.bench_function("lazy_shared_array_2_processes (experiment)", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| experiments::random_parallel_lazy(RANDOM, 2, SEED).0)
                .sum()
        })
    });
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
