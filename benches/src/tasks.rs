//! Task throughput, round trips and payloads through the pool, and the
//! `rayon` ceiling for task throughput.
//!
//! The functions workers run are plain `fn`s here, so every benchmark binary
//! and the comparison runner send the same code.

use std::hint::black_box;
use std::time::{Duration, Instant};

use forkpool::Pool;
use rayon::prelude::*;

/// The per-task work of the task-throughput benchmarks: next to nothing, so
/// what is measured is the pool's cost per task.
pub fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// The payload benchmarks' task: takes a buffer, answers with its length.
pub fn byte_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// How a map splits its items into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// Python's rule (about four tasks per worker), the default of `map`.
    Default,
    /// This many items per task.
    Size(usize),
}

impl Chunks {
    /// A short name for benchmark ids and tables.
    pub fn label(self) -> String {
        match self {
            Chunks::Default => "default".into(),
            Chunks::Size(n) => n.to_string(),
        }
    }
}

/// Checks a map of [`inc`] over `0..n` and keeps it from being optimised out.
fn check(out: &[u64], items: &[u64]) {
    assert_eq!(out.len(), items.len());
    assert_eq!(out.last(), items.last().map(|&x| inc(x)).as_ref());
    black_box(out);
}

/// Times one `pool.map(inc, items)` split as `chunks` says.
pub fn time_map(pool: &Pool, items: &[u64], chunks: Chunks) -> Duration {
    let start = Instant::now();
    let out = match chunks {
        Chunks::Default => pool.map(inc, items.iter().copied()),
        Chunks::Size(n) => pool.map_chunked(inc, items.iter().copied(), n),
    }
    .expect("map");
    let took = start.elapsed();
    check(&out, items);
    took
}

/// The ceiling for task throughput: the same map on a `rayon` pool of
/// threads in this process (no processes, no pipes, no serialisation).
#[derive(Debug)]
pub struct RayonMap {
    pool: rayon::ThreadPool,
}

impl RayonMap {
    /// A `rayon` pool of `threads` threads.
    pub fn new(threads: usize) -> RayonMap {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool");
        RayonMap { pool }
    }

    /// Times `items.par_iter().map(inc).collect()`, with at most `chunks`
    /// items per rayon job (`with_max_len`), or rayon's own splitting for
    /// [`Chunks::Default`].
    pub fn time_map(&self, items: &[u64], chunks: Chunks) -> Duration {
        let start = Instant::now();
        let out: Vec<u64> = self.pool.install(|| match chunks {
            Chunks::Default => items.par_iter().map(|&x| inc(black_box(x))).collect(),
            Chunks::Size(n) => items
                .par_iter()
                .with_max_len(n)
                .map(|&x| inc(black_box(x)))
                .collect(),
        });
        let took = start.elapsed();
        check(&out, items);
        took
    }

    /// Runs `f` on the rayon pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Times `n` sequential `pool.apply(inc, x)` round trips; returns the time
/// per round trip.
pub fn time_apply(pool: &Pool, n: u32) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let r = pool.apply(inc, black_box(u64::from(i))).expect("apply");
        assert_eq!(r, u64::from(i) + 1);
    }
    start.elapsed() / n.max(1)
}

/// Times `pool.apply(byte_len, payload)`: the payload's trip to a worker and
/// the answer's trip back. The payload is built before the clock starts.
pub fn time_payload(pool: &Pool, payload: Vec<u8>) -> Duration {
    let len = payload.len();
    let start = Instant::now();
    let got = pool.apply(byte_len, payload).expect("apply");
    let took = start.elapsed();
    assert_eq!(got, len);
    took
}
