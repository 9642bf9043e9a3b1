//! Whole-array passes in the parent (fill, count, compare) split over
//! threads, one block of rows each.
//!
//! The parent has every page of an array it created mapped (forkpool-shm
//! populates new arrays), while a pool's workers have only the rows they
//! touched: a pass over the whole array runs fastest on the parent's own
//! threads, with no page fault and nothing through a pipe. One thread
//! reaches about 20 GiB/s on this machine's memory for a plain fill and
//! less for a pass that compares or counts; more threads help when one core
//! cannot saturate the memory bus (a large server), and cost nothing
//! otherwise. The threads are joined before a pass returns, so a pool
//! started afterwards forks a single-threaded parent.

use std::num::NonZeroUsize;
use std::ops::Range;

/// The threads a pass uses by default: one per core this process may run
/// on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Runs `work` over `threads` contiguous blocks of rows `0..nrows` (fewer
/// if there are fewer rows), each on its own thread, and returns the
/// results in row order.
///
/// # Panics
///
/// If `work` panics (the panic is passed on) or a thread cannot be
/// started.
///
/// # Examples
///
/// ```
/// let sums = demos::passes::on_row_blocks(10, 3, |rows| rows.sum::<usize>());
/// assert_eq!(sums.len(), 3);
/// assert_eq!(sums.iter().sum::<usize>(), 45);
/// ```
pub fn on_row_blocks<R: Send>(
    nrows: usize,
    threads: usize,
    work: impl Fn(Range<usize>) -> R + Sync,
) -> Vec<R> {
    let blocks: Vec<Range<usize>> = forkpool_shm::split_rows(nrows, threads.clamp(1, nrows.max(1)))
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect();
    if blocks.len() <= 1 {
        return blocks.into_iter().map(&work).collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = blocks
            .into_iter()
            .map(|rows| scope.spawn(move || work(rows)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_row_once_in_order() {
        for (nrows, threads) in [(0, 4), (1, 4), (7, 3), (100, 1), (5, 16)] {
            let got: Vec<usize> = on_row_blocks(nrows, threads, |r| r.collect::<Vec<_>>())
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(
                got,
                (0..nrows).collect::<Vec<_>>(),
                "{nrows} rows, {threads} threads"
            );
        }
    }
}
