//! Criterion benchmarks of the pool, each beside the ceiling it is measured
//! against in the same run: a raw pipe ping-pong between two processes for
//! `apply`'s round trip.
//!
//! Run: `cargo bench -p forkpool --bench pool`.

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::Pool;

fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn map_throughput(c: &mut Criterion) {
    let pool = Pool::new(2).unwrap();
    let mut g = c.benchmark_group("map_1M_u64");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1_000_000));
    let items: Vec<u64> = (0..1_000_000).collect();
    g.bench_function("default_chunks", |b| {
        b.iter(|| black_box(pool.map(inc, items.iter().copied()).unwrap()))
    });
    g.finish();
}

fn per_task_overhead(c: &mut Criterion) {
    let pool = Pool::new(2).unwrap();
    let mut g = c.benchmark_group("imap_unordered_chunksize_1");
    g.sample_size(10);
    const N: u64 = 100_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("100k_tasks", |b| {
        b.iter(|| {
            let s: u64 = pool.imap_unordered(inc, 0..N, 1).map(Result::unwrap).sum();
            black_box(s)
        })
    });
    g.finish();
}

/// A child process that echoes one byte per message back on another pipe.
struct PingPong {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    child: nix::unistd::Pid,
}

impl PingPong {
    fn start() -> PingPong {
        let (a_r, a_w) = nix::unistd::pipe().unwrap();
        let (b_r, b_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only reads and writes pipes, then `_exit`s.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(a_w);
                drop(b_r);
                let mut byte = [0u8; 1];
                while let Ok(1) = nix::unistd::read(a_r.as_fd(), &mut byte) {
                    if nix::unistd::write(&b_w, &byte).is_err() {
                        break;
                    }
                }
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => PingPong {
                to_child: Some(a_w),
                from_child: b_r,
                child,
            },
        }
    }

    fn round_trip(&self) {
        let mut byte = [7u8; 1];
        nix::unistd::write(self.to_child.as_ref().unwrap(), &byte).unwrap();
        nix::unistd::read(self.from_child.as_fd(), &mut byte).unwrap();
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        drop(self.to_child.take()); // EOF ends the child
        let _ = nix::sys::wait::waitpid(self.child, None);
    }
}

fn round_trip_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(5));
    let ping = PingPong::start();
    g.bench_function("raw_pipe_ping_pong", |b| b.iter(|| ping.round_trip()));
    drop(ping);
    let pool = Pool::new(2).unwrap();
    g.bench_function("apply_u64", |b| {
        b.iter(|| black_box(pool.apply(inc, black_box(41)).unwrap()))
    });
    g.finish();
}

fn start_and_shutdown(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_start_and_shutdown");
    g.sample_size(20);
    for n in [2usize, 4] {
        g.bench_with_input(BenchmarkId::new("new_close_join", n), &n, |b, &n| {
            b.iter(|| {
                let pool = Pool::new(n).unwrap();
                pool.close();
                pool.join().unwrap();
            })
        });
        g.bench_with_input(BenchmarkId::new("new_terminate", n), &n, |b, &n| {
            b.iter(|| drop(Pool::new(n).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    round_trip_latency,
    per_task_overhead,
    map_throughput,
    start_and_shutdown
);
criterion_main!(benches);
