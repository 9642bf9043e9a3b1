//! Counters incremented by 2 worker processes at once: behind the robust
//! process-shared lock (a 0-d `Locked` array, Python's `Value(lock=True)`), with
//! one atomic `fetch_add` on the shared element (a 0-d atomic array), and, as the
//! ceiling, each worker on its own cache line (no sharing at all).
//!
//! Time per increment (the two workers' increments together over the wall
//! time, including one `map` to start them).
//!
//! Run: `cargo bench -p forkpool-benches --bench counters`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use forkpool_benches::arrays::{Counter, Counters};

const PROCESSES: usize = 2;

fn counters(c: &mut Criterion) {
    let counters = Counters::new(PROCESSES);
    let mut g = c.benchmark_group("counter_2_processes");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, counter) in [
        ("own_cache_line (ceiling)", Counter::OwnSlot),
        ("shared_value_fetch_add (lock-free)", Counter::Atomic),
        ("locked_value_lock_add_unlock", Counter::Locked),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // `iters` increments in all, shared between the workers.
                let per_worker = iters.div_ceil(PROCESSES as u64).max(1);
                let took = counters.run(counter, per_worker);
                took.mul_f64(iters as f64 / (per_worker * PROCESSES as u64) as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
