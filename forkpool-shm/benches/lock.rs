//! Per-operation cost of element writes: lock-free atomics against the
//! robust process-shared lock, in one process and with two forked processes
//! contending for the same element.

mod support;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use forkpool_shm::{Locked, SharedArray};

fn one_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_op_1proc");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let array = SharedArray::<f64>::new(&[1024]).unwrap();
    let mut i = 0usize;
    g.bench_function("shared_array_set (relaxed store)", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            array.set(i, black_box(1.0));
        })
    });
    let value = SharedArray::<_>::full(&[], 0u64).unwrap();
    g.bench_function("shared_value_fetch_add (lock-free)", |b| {
        b.iter(|| value.fetch_add(0, black_box(1), Ordering::AcqRel))
    });
    let locked = SharedArray::<f64, Locked>::new(&[1024]).unwrap();
    g.bench_function("locked_array_lock_write_unlock", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            locked.with_lock(|data| data[i] = black_box(1.0)).unwrap();
        })
    });
    let counter = SharedArray::<_, Locked>::full(&[], 0u64).unwrap();
    g.bench_function("locked_value_lock_increment_unlock", |b| {
        b.iter(|| counter.with_lock(|v| v[0] += black_box(1)).unwrap())
    });
    let std_mutex = std::sync::Mutex::new(0u64);
    g.bench_function("std_mutex_increment (one process only, reference)", |b| {
        b.iter(|| *std_mutex.lock().unwrap() += black_box(1))
    });
    g.finish();
}

fn two_processes(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_op_2proc_contended");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);

    // Each iteration is one operation; the two processes do half each, at
    // the same time, on the same element.
    let value = SharedArray::<_>::full(&[], 0u64).unwrap();
    g.bench_function("shared_value_fetch_add (lock-free)", |b| {
        b.iter_custom(|iters| {
            support::forked(&[0, 1], |_| {
                for _ in 0..iters / 2 {
                    value.fetch_add(0, 1, Ordering::AcqRel);
                }
            })
        })
    });
    let counter = SharedArray::<_, Locked>::full(&[], 0u64).unwrap();
    g.bench_function("locked_value_lock_increment_unlock", |b| {
        b.iter_custom(|iters| {
            support::forked(&[0, 1], |_| {
                for _ in 0..iters / 2 {
                    counter.with_lock(|v| v[0] += 1).unwrap();
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, one_process, two_processes);
criterion_main!(benches);
