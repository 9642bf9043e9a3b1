//! Pool start-up as the parent's memory grows.
//!
//! `fork` copies the page tables of the parent's private memory (about
//! 2 MiB of page tables per GiB of 4 KiB pages) but not those of shared
//! mappings, whose pages the child maps as it touches them. The pool forks
//! its zygote from the parent, then the zygote forks every worker, so a
//! parent holding private memory pays one page-table copy per process
//! started.

use std::hint::black_box;
use std::time::{Duration, Instant};

use forkpool::Pool;
use forkpool_shm::SharedArray;

/// Memory the parent holds while a pool starts.
#[derive(Debug)]
pub enum Ballast {
    /// Nothing beyond the benchmark process itself.
    None,
    /// Private anonymous memory, every page written (a `Vec`).
    Private(Vec<u8>),
    /// A shared array of the same size, every page mapped in the parent.
    Shared(SharedArray<u8>),
}

impl Ballast {
    /// `bytes` of touched private memory.
    pub fn private(bytes: usize) -> Ballast {
        if bytes == 0 {
            return Ballast::None;
        }
        Ballast::Private(black_box(vec![1u8; bytes]))
    }

    /// A shared array of `bytes`, every page mapped in this process.
    ///
    /// # Panics
    ///
    /// If the array cannot be created.
    pub fn shared(bytes: usize) -> Ballast {
        if bytes == 0 {
            return Ballast::None;
        }
        let array = SharedArray::<u8>::new(&[bytes.div_ceil(4096), 4096]).expect("shared ballast");
        array.prefault(0..array.nrows()).expect("prefault");
        Ballast::Shared(array)
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Ballast::None => 0,
            Ballast::Private(v) => v.len(),
            Ballast::Shared(a) => a.len(),
        }
    }
}

/// Times `Pool::new(processes)` (it returns once every worker is ready),
/// then `close` + `join`; returns `(start, start + close + join)`.
///
/// # Panics
///
/// If the pool fails.
pub fn time_start(processes: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let pool = Pool::new(processes).expect("pool");
    let started = start.elapsed();
    pool.close();
    pool.join().expect("join");
    (started, start.elapsed())
}
