//! Pool start-up as the parent's memory grows: `Pool::new(4)` (returns once
//! the 4 workers are ready) and `Pool::new(4)` + `close` + `join`, with the
//! parent holding 0 B, 256 MiB, 1 GiB and 4 GiB of touched private memory,
//! and, for contrast, the same sizes in a shared array it has mapped. The
//! ceiling: 4 bare `fork` + `_exit` + `waitpid` from the same parent.
//!
//! `fork` copies the page tables of private memory (about 2 MiB per GiB),
//! not of shared mappings. The pool forks a zygote from the parent and the
//! zygote forks the workers: 5 copies of the parent's page tables for 4
//! workers, against 4 for bare forks.
//!
//! Run: `cargo bench -p forkpool-benches --bench startup`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use forkpool_benches::ceiling::fork_exit_wait;
use forkpool_benches::startup::{Ballast, time_start};

const PROCESSES: usize = 4;
const SIZES: [(&str, usize); 4] = [
    ("0B", 0),
    ("256MiB", 256 << 20),
    ("1GiB", 1 << 30),
    ("4GiB", 4 << 30),
];

fn startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_start_4_workers");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for shared in [false, true] {
        for (label, bytes) in SIZES {
            if shared && bytes == 0 {
                continue;
            }
            let ballast = if shared {
                Ballast::shared(bytes)
            } else {
                Ballast::private(bytes)
            };
            let kind = if shared { "shared" } else { "private" };
            let id = format!("{kind}_{label}");
            g.bench_function(BenchmarkId::new("fork_exit_wait_x4 (ceiling)", &id), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| fork_exit_wait(PROCESSES)).sum())
            });
            g.bench_function(BenchmarkId::new("forkpool_new", &id), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| time_start(PROCESSES).0).sum())
            });
            g.bench_function(BenchmarkId::new("forkpool_new_close_join", &id), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| time_start(PROCESSES).1).sum())
            });
            assert_eq!(ballast.bytes(), bytes);
            drop(ballast);
        }
    }
    g.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
