//! Forked workers for benchmarks: fork, run, `_exit`, wait for exactly these pids.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// A group whose iterations each write `bytes` (reported as throughput):
/// 10 flat samples over `secs` seconds after 1 s of warm-up, as an
/// iteration that takes a large fraction of a second needs.
pub fn bytes_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    bytes: usize,
    secs: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs));
    g
}

/// Forks one child per item, runs `work(item)` in each, waits for all of
/// them, and returns the wall time from the first fork to the last exit.
pub fn forked<I: Copy>(items: &[I], work: impl Fn(I)) -> Duration {
    let start = Instant::now();
    let mut pids = Vec::with_capacity(items.len());
    for &item in items {
        // SAFETY: the benchmark process is single-threaded here; the child
        // runs `work` and `_exit`s without returning into criterion.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                work(item);
                // SAFETY: ends the child without running exit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    for pid in pids {
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
    }
    start.elapsed()
}
