//! Method 3 of the notes: `mmap` of an array: an anonymous shared mapping
//! that the workers fill.
//!
//! The array is a memfd mapped `MAP_SHARED` (never a private anonymous
//! map, whose pages would be copied at the workers' first write). The pool's
//! initializer hands each worker the array's handle; each task claims a block
//! of rows (a [`Partitioned`](forkpool_shm::Partitioned) array checks across processes that no one else
//! holds them), maps its pages in one call, and fills them through an
//! ordinary `&mut [f64]` with a known formula: element `(r, c)` holds its
//! 1-based position `r * cols + c + 1`. The parent then checks every value,
//! and the memory table, taken while the workers still map the array, shows
//! it once: the PSS of its pages summed over all processes is one array.

use std::sync::OnceLock;

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::{Partitioned, SharedArray};

use crate::common::{self, bytes, fact, phase};

/// Options of the `mmap` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 320000, 25.6 GB in all: more than
    /// this machine's memory; see the memmap demo for a file-backed array).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Worker processes (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
}

/// The value element `(row, col)` should hold: its 1-based position in the
/// array, so that an element left at 0 is caught.
fn value(row: usize, col: usize, cols: usize) -> f64 {
    (row * cols + col + 1) as f64
}

// ANCHOR: worker
/// The shared array, stored in every worker by the pool's initializer.
static ARRAY: OnceLock<SharedArray<f64, Partitioned>> = OnceLock::new();

/// Fills rows `[start, end)`: claims them (no other process may hold
/// them meanwhile), maps their pages in one call, then writes them as an
/// ordinary slice. Returns this worker's pid and the rows it filled.
fn fill_block((start, end): (usize, usize)) -> Result<(i32, usize), String> {
    let array = ARRAY.get().expect("the initializer stored the array");
    let cols = array.row_len();
    array
        .with_rows_mut(start..end, |block| {
            block.prefault()?;
            for (i, row) in block.chunks_mut(cols).enumerate() {
                for (col, x) in row.iter_mut().enumerate() {
                    *x = value(start + i, col, cols);
                }
            }
            Ok(())
        })
        .and_then(|filled| filled)
        .map_err(|e: forkpool_shm::ShmError| e.to_string())?;
    Ok((std::process::id() as i32, end - start))
}
// ANCHOR_END: worker

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let size = common::f64_rows_for(rows, cols, processes)?;
    common::numbered_exactly(rows, cols)?;
    common::heading(
        "mmap",
        "an anonymous shared mapping (memfd, MAP_SHARED) filled by the workers",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", processes);
    common::ensure_memory(
        size,
        "an anonymous shared array",
        "use smaller --rows/--cols, or the file-backed array of the memmap demo",
    )?;

    // ANCHOR: create
    let (array, _) = phase("create (reserve the pages)", Some(size), || {
        SharedArray::<f64, Partitioned>::new(&[rows, cols])
    });
    let array = array.context("creating the shared array")?;
    let (pool, _) = phase("start the pool", None, || {
        let array = array.clone();
        Pool::builder()
            .processes(processes)
            .initializer(move || {
                ARRAY
                    .set(array.clone())
                    .expect("a worker runs its initializer once")
            })
            .build()
    });
    let pool = pool.context("starting the pool")?;
    // ANCHOR_END: create

    // ANCHOR: map
    // A few blocks per worker: the progress bar moves, and the work balances.
    let blocks: Vec<(usize, usize)> = forkpool_shm::split_rows(rows, (processes * 8).min(rows))
        .into_iter()
        .map(|r| (r.start, r.end))
        .collect();
    let bar = common::progress(blocks.len() as u64, "workers fill their rows");
    let (filled, _) = phase("workers fill their rows", Some(size), || {
        let it = pool
            .progress_bar(bar)
            .imap_unordered(fill_block, blocks.iter().copied(), 1);
        it.collect::<Vec<_>>()
    });
    // ANCHOR_END: map
    let rows_by_pid = common::rows_per_pid(filled)?;

    // ANCHOR: verify
    let bar = common::progress(blocks.len() as u64, "verify every value");
    let (checked, _) = phase("verify every value", Some(size), || {
        let mut checked = 0u64;
        for &(start, end) in &blocks {
            array.with_rows(start..end, |block| {
                for (i, row) in block.chunks(cols).enumerate() {
                    for (col, &x) in row.iter().enumerate() {
                        let want = value(start + i, col, cols);
                        ensure!(
                            x == want,
                            "element ({}, {col}) holds {x}, expected {want}{}",
                            start + i,
                            if x == 0.0 { " (never written)" } else { "" }
                        );
                    }
                    checked += row.len() as u64;
                }
                Ok(())
            })??;
            bar.inc(1);
        }
        Ok::<_, anyhow::Error>(checked)
    });
    bar.finish_and_clear();
    let checked = checked?;
    ensure!(
        checked == (rows * cols) as u64,
        "checked {checked} items of {}",
        rows * cols
    );

    let report = common::memory_table("memory while the workers hold the array", Some(&pool), &[])?;
    let in_memory = common::array_pages(&report, size);
    common::one_copy(in_memory, size)?;
    common::verified(format!(
        "{checked} values as written, rows filled by {} of {processes} workers, \
         one copy in memory",
        rows_by_pid.len()
    ));
    // ANCHOR_END: verify
    pool.close();
    pool.join()?;
    Ok(())
}
