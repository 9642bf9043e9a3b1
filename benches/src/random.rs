//! Random fill, serial and on a pool: one Philox4x32-10 stream per row from
//! one master seed, so the array is bit-identical whatever the number of
//! workers (DESIGN.md, "Reproducible parallel randomness"); and the
//! generators alone, per core, against numpy's (`python/rng_per_core.py`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forkpool::Pool;
use forkpool_shm::{Partitioned, SharedArray};

use crate::arrays::{ROW, rows_for};

/// The row kernel, shared with the `random-fill` demo: row `row` is the
/// Philox4x32-10 stream `row` under key `seed`.
pub use demos::random_fill::fill_row;

/// The demo's previous row kernel, kept for the side-by-side measurement:
/// ChaCha8 (`rand_chacha`) keyed by `seed`, stream `row`, drawn 512 words
/// at a time and turned into doubles from their top 53 bits.
pub fn chacha8_row(seed: u64, row: u64, out: &mut [f64]) {
    use rand::{RngExt, SeedableRng};
    const UNIT: f64 = 1.0 / (1u64 << 53) as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(row);
    let mut words = [0u64; 512];
    for chunk in out.chunks_mut(words.len()) {
        let words = &mut words[..chunk.len()];
        rng.fill(words);
        for (x, w) in chunk.iter_mut().zip(words.iter()) {
            *x = (w >> 11) as f64 * UNIT;
        }
    }
}

/// Generation alone on one thread: `rows` calls of `kernel` for rows
/// `0..rows` into one reused buffer of `cols` doubles, which stays in the
/// cache, as `python/rng_per_core.py` times numpy's `random(out=row)`.
pub fn generation_per_core(
    kernel: fn(u64, u64, &mut [f64]),
    rows: usize,
    cols: usize,
    seed: u64,
) -> Duration {
    let mut row = vec![0f64; cols];
    let start = Instant::now();
    for r in 0..rows {
        kernel(seed, r as u64, &mut row);
        std::hint::black_box(&mut row);
    }
    start.elapsed()
}

static ARRAY: OnceLock<SharedArray<f64, Partitioned>> = OnceLock::new();

/// Task: claim rows `[first, end)` of the worker's array, map them in one
/// call, and fill each row from its own stream.
pub fn fill_block((first, end, seed): (usize, usize, u64)) {
    let array = ARRAY
        .get()
        .expect("the pool's initializer stores the array");
    array
        .with_rows_mut(first..end, |rows| {
            rows.prefault().expect("prefault");
            for row in first..end {
                fill_row(seed, row as u64, rows.row_mut(row));
            }
        })
        .expect("claim");
}

/// Serial random fill of `bytes` bytes: a private array (`vec!`, its pages
/// allocated as they are first written, as `np.empty` does) filled row by
/// row in this process. Returns the time and the array.
pub fn serial(bytes: usize, seed: u64) -> (Duration, Vec<f64>) {
    let rows = rows_for(bytes);
    let start = Instant::now();
    let mut data = vec![0f64; rows * ROW];
    for (row, out) in data.chunks_exact_mut(ROW).enumerate() {
        fill_row(seed, row as u64, out);
    }
    (start.elapsed(), data)
}

/// Parallel random fill of `bytes` bytes by `processes` workers, end to
/// end: creating the shared array (timed: `SharedArray::new` reserves every
/// page), starting the pool (not timed: see the start-up benchmarks) and
/// the fill (timed, [`fill_existing`]). Returns the time and the array.
///
/// # Panics
///
/// If the array or the pool cannot be created.
pub fn parallel(
    bytes: usize,
    processes: usize,
    seed: u64,
) -> (Duration, SharedArray<f64, Partitioned>) {
    let start = Instant::now();
    let array = SharedArray::<f64, Partitioned>::new(&[rows_for(bytes), ROW]).expect("array");
    let created = start.elapsed();
    let filled = fill_existing(&array, processes, seed);
    (created + filled, array)
}

/// Random fill of an existing shared array (its pages allocated, not yet
/// mapped by any worker) by `processes` fresh workers, one block of rows
/// each: each maps its rows in bulk, then fills them. Starting the pool is
/// not timed. Returns the time of the fill.
///
/// # Panics
///
/// If the pool cannot be created or a task fails.
pub fn fill_existing(
    array: &SharedArray<f64, Partitioned>,
    processes: usize,
    seed: u64,
) -> Duration {
    let for_workers = array.clone();
    let pool = Pool::builder()
        .processes(processes)
        .try_initializer(move || {
            ARRAY
                .set(for_workers.clone())
                .map_err(|_| "the array was already set in this worker")
        })
        .build()
        .expect("pool");
    let tasks: Vec<(usize, usize, u64)> = array
        .row_blocks(processes)
        .into_iter()
        .map(|r| (r.start, r.end, seed))
        .collect();
    let start = Instant::now();
    pool.map(fill_block, tasks).expect("random fill");
    let filled = start.elapsed();
    drop(pool);
    filled
}

/// [`fill_existing`] of a new array of `bytes` (created before the clock
/// starts). Returns the time of the fill.
///
/// # Panics
///
/// As [`fill_existing`], or if the array cannot be created.
pub fn existing(bytes: usize, processes: usize, seed: u64) -> Duration {
    let array = SharedArray::<f64, Partitioned>::new(&[rows_for(bytes), ROW]).expect("array");
    fill_existing(&array, processes, seed)
}

/// What threads can do with new memory: a new private array (`vec!`), its
/// rows filled by `threads` threads of this process, each faulting in its
/// own pages. The machine's limit for an end-to-end parallel fill.
pub fn threads_on_new(bytes: usize, threads: usize, seed: u64) -> Duration {
    let start = Instant::now();
    let mut data = vec![0f64; rows_for(bytes) * ROW];
    let _ = threads_on_mapped(&mut data, threads, seed);
    let took = start.elapsed();
    std::hint::black_box(&data);
    took
}

/// The ceiling: the same generation on `threads` threads of this process,
/// into a private buffer whose pages are all mapped already (no page
/// faults, no processes): the cost of the arithmetic alone.
pub fn threads_on_mapped(data: &mut [f64], threads: usize, seed: u64) -> Duration {
    let nrows = data.len() / ROW;
    let parts = forkpool_shm::split_rows(nrows, threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        let mut rest = &mut *data;
        for r in parts {
            let (mine, tail) = rest.split_at_mut(r.len() * ROW);
            rest = tail;
            s.spawn(move || {
                for (i, out) in mine.chunks_exact_mut(ROW).enumerate() {
                    fill_row(seed, (r.start + i) as u64, out);
                }
            });
        }
    });
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_parallel_and_threads_agree_bit_for_bit() {
        let bytes = 6 * ROW * 8;
        let (_, serial) = serial(bytes, 7);
        let (_, shared) = parallel(bytes, 2, 7);
        assert_eq!(shared.to_vec().unwrap(), serial);
        let mut mapped = vec![0f64; serial.len()];
        threads_on_mapped(&mut mapped, 4, 7);
        assert_eq!(mapped, serial);
        assert!(serial.iter().all(|x| (0.0..1.0).contains(x)));
        assert_ne!(serial[0], serial[ROW], "rows have their own streams");
    }
}
