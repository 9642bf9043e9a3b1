//! Method 4 of the notes: `ctypes` + fork copy-on-write: a read-only array
//! that the workers inherit.
//!
//! The array is a plain, private `Vec<f64>`, made in a global before the
//! pool forks: no shared memory at all. `fork` gives every worker the
//! parent's pages copy-on-write: they stay one copy for as long as nobody
//! writes them, so workers that only read (here: the sum of each row) cost
//! no memory, and nothing is serialised but row ranges and sums. The memory
//! table shows it: each worker's private memory stays near zero while it
//! maps every page of the array.
//!
//! The catch, and why this only suits read-only data: with `--write`, the
//! workers negate their rows of their copy. The kernel copies each page
//! they touch: their private memory grows by what they wrote, and the
//! parent (and every other worker) never sees the writes. The demo checks
//! both.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::{MemoryReport, MemoryUsage};

use crate::common::{self, bytes, fact, phase};

/// Options of the `fork-cow` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 320000, 25.6 GB: more than this
    /// machine's memory).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Worker processes (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Then let the workers write their rows, to see the copy-on-write
    /// pages appear (and the parent not see the writes).
    #[arg(long)]
    write: bool,
}

/// A row-major array of `f64`, `cols` to a row.
struct Rows {
    data: Vec<f64>,
    cols: usize,
}

impl Rows {
    /// Rows `[start, end)` as one slice.
    fn rows(&self, start: usize, end: usize) -> &[f64] {
        &self.data[start * self.cols..end * self.cols]
    }
}

/// The value element `(row, col)` holds: its 1-based position.
fn value(row: usize, col: usize, cols: usize) -> f64 {
    (row * cols + col + 1) as f64
}

/// The sum of row `row`, computed exactly (it is an integer below 2^53,
/// so every partial sum of the row, in any order, is exact).
fn expected_sum(row: usize, cols: usize) -> f64 {
    let (row, cols) = (row as u128, cols as u128);
    (row * cols * cols + cols * (cols + 1) / 2) as f64
}

/// Sums each row of `rows`, `cols` to a row.
fn sum_rows(rows: &[f64], cols: usize) -> Vec<f64> {
    rows.chunks(cols).map(|row| row.iter().sum()).collect()
}

// ANCHOR: worker
/// The array: a plain, private `Vec<f64>` in a global, filled before the
/// pool forks. Every worker inherits it copy-on-write.
static ARRAY: RwLock<Rows> = RwLock::new(Rows {
    data: Vec::new(),
    cols: 0,
});

/// Sums rows `[start, end)` of the inherited array: it only reads, so no
/// page is copied.
fn row_sums((start, end): (usize, usize)) -> Vec<f64> {
    let array = ARRAY.read().unwrap_or_else(PoisonError::into_inner);
    sum_rows(array.rows(start, end), array.cols)
}

/// Negates rows `[start, end)` of this worker's copy of the array: the
/// kernel copies every page written, for this worker alone. Returns this
/// worker's pid, the bytes it wrote, and the row sums it now sees.
fn negate_rows((start, end): (usize, usize)) -> (i32, u64, Vec<f64>) {
    let mut array = ARRAY.write().unwrap_or_else(PoisonError::into_inner);
    let cols = array.cols;
    let mine = &mut array.data[start * cols..end * cols];
    for x in mine.iter_mut() {
        *x = -*x;
    }
    let written = size_of_val(mine) as u64;
    (std::process::id() as i32, written, sum_rows(mine, cols))
}
// ANCHOR_END: worker

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let size = common::f64_rows_for(rows, cols, processes)?;
    ensure!(
        expected_sum(rows - 1, cols) < (1u64 << 53) as f64,
        "{rows} x {cols} is too large for exact row sums in f64 (the last row's sum \
         passes 2^53): use fewer --rows or --cols"
    );
    common::heading(
        "fork-cow",
        "a private array inherited copy-on-write by forked workers",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", processes);
    let copies = if args.write { 2 } else { 1 };
    common::ensure_memory(
        size * copies,
        if args.write {
            "the array and the workers' copies of its pages"
        } else {
            "the private array"
        },
        "use smaller --rows/--cols",
    )?;

    // ANCHOR: create
    let bar = common::progress(rows as u64, "make the array");
    let (data, _) = phase("make the array (private)", Some(size), || {
        let mut data = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            data.extend((0..cols).map(|col| value(row, col, cols)));
            bar.inc(1);
        }
        data
    });
    bar.finish_and_clear();
    *ARRAY.write().unwrap_or_else(PoisonError::into_inner) = Rows { data, cols };
    // The workers inherit the array as it is now: fork copies the page
    // tables, not the pages.
    let (pool, _) = phase("start the pool (fork)", None, || Pool::new(processes));
    let pool = pool.context("starting the pool")?;
    // ANCHOR_END: create

    let result = with_pool(args, &pool, size);
    // Free the array whatever happened (`all` runs every demo in one process).
    *ARRAY.write().unwrap_or_else(PoisonError::into_inner) = Rows {
        data: Vec::new(),
        cols: 0,
    };
    pool.close();
    pool.join()?;
    result
}

/// The demo's work once the pool has forked.
fn with_pool(args: &Args, pool: &Pool, size: u64) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let blocks: Vec<(usize, usize)> = forkpool_shm::split_rows(rows, (processes * 8).min(rows))
        .into_iter()
        .map(|r| (r.start, r.end))
        .collect();

    // ANCHOR: read
    let bar = common::progress(blocks.len() as u64, "workers sum their rows");
    let (sums, _) = phase("workers sum their rows", Some(size), || {
        let mut sums = Vec::with_capacity(rows);
        for block in pool
            .progress_bar(bar)
            .imap(row_sums, blocks.iter().copied(), 1)
        {
            sums.extend(block?);
        }
        anyhow::Ok(sums)
    });
    let sums = sums.context("a worker failed")?;
    // ANCHOR_END: read
    fact(
        "serialised",
        format!(
            "{} tasks of 2 numbers out, {rows} sums back: the array is never sent",
            blocks.len()
        ),
    );
    let (parent_sums, _) = phase("parent sums the rows (serial)", Some(size), || {
        let array = ARRAY.read().unwrap_or_else(PoisonError::into_inner);
        sum_rows(&array.data, cols)
    });

    // ANCHOR: verify
    let read = common::memory_table("memory while the workers read the array", Some(pool), &[])?;
    let total = read.total();
    fact(
        "anonymous pages, summed PSS",
        format!(
            "{} = {:.3}x the array",
            bytes(total.pss_anon),
            total.pss_anon as f64 / size as f64
        ),
    );
    for (row, (&got, &mine)) in sums.iter().zip(&parent_sums).enumerate() {
        let want = expected_sum(row, cols);
        ensure!(
            got == want,
            "a worker summed row {row} to {got}, expected {want}"
        );
        ensure!(
            mine == want,
            "the parent summed row {row} to {mine}, expected {want}"
        );
    }
    ensure!(
        sums.len() == rows,
        "{} row sums for {rows} rows",
        sums.len()
    );
    // Reading copies nothing: every worker maps the array, none holds a
    // private copy of it.
    let near_zero = size / 10 + (4 << 20);
    for w in workers(&read) {
        ensure!(
            w.private() <= near_zero,
            "{} (pid {}) holds {} of private memory after only reading an array of {}: \
             pages were copied",
            w.role,
            w.pid,
            bytes(w.private()),
            bytes(size)
        );
    }
    ensure!(
        total.pss_anon <= size + size / 20 + (32 << 20),
        "the private memory of all processes sums to {}, more than one array of {}",
        bytes(total.pss_anon),
        bytes(size)
    );
    // ANCHOR_END: verify
    if !args.write {
        common::verified(format!(
            "{rows} row sums exact, workers' private memory near zero (at most {}), \
             one copy in memory",
            bytes(workers(&read).map(MemoryUsage::private).max().unwrap_or(0))
        ));
        return Ok(());
    }

    // ANCHOR: write
    let bar = common::progress(blocks.len() as u64, "workers negate their rows");
    let (written, _) = phase("workers negate their rows", Some(size), || {
        let it = pool
            .progress_bar(bar)
            .imap(negate_rows, blocks.iter().copied(), 1);
        it.collect::<Result<Vec<_>, _>>()
    });
    let written = written.context("a worker failed")?;
    // ANCHOR_END: write

    // ANCHOR: verify_write
    let after = common::memory_table("memory after the workers wrote their rows", Some(pool), &[])?;
    let mut wrote_by_pid: BTreeMap<i32, u64> = BTreeMap::new();
    let mut row = 0;
    for (pid, n, block_sums) in &written {
        *wrote_by_pid.entry(*pid).or_default() += n;
        for &got in block_sums {
            let want = -expected_sum(row, cols);
            ensure!(
                got == want,
                "worker {pid} sees row {row} summing to {got}, expected {want}"
            );
            row += 1;
        }
    }
    // Each worker's private memory grew by about what it wrote: the pages
    // the kernel copied for it.
    let mut copied = 0;
    for w in workers(&after) {
        let before = read
            .entries()
            .iter()
            .find(|b| b.pid == w.pid)
            .with_context(|| format!("{} (pid {}) was replaced", w.role, w.pid))?;
        let grew = w.private_dirty.saturating_sub(before.private_dirty);
        let wrote = wrote_by_pid.get(&w.pid.as_raw()).copied().unwrap_or(0);
        fact(
            &format!("{} copied", w.role),
            format!("{} of pages for {} written", bytes(grew), bytes(wrote)),
        );
        ensure!(
            grew >= wrote - wrote / 10 && grew <= wrote + wrote / 10 + (4 << 20),
            "{} wrote {} of its copy but its private memory grew by {}: \
             expected about as much",
            w.role,
            bytes(wrote),
            bytes(grew)
        );
        copied += grew;
    }
    // The parent never sees the workers' writes.
    let (parent_after, _) = phase("parent sums the rows again", Some(size), || {
        let array = ARRAY.read().unwrap_or_else(PoisonError::into_inner);
        sum_rows(&array.data, cols)
    });
    ensure!(
        parent_after == parent_sums,
        "the parent's array changed after the workers wrote their copies"
    );
    common::verified(format!(
        "{rows} row sums exact, workers' private memory near zero while reading, \
         {} of pages copied for {} written, the parent's array unchanged",
        bytes(copied),
        bytes(written.iter().map(|(_, n, _)| n).sum())
    ));
    // ANCHOR_END: verify_write
    Ok(())
}

/// The workers' lines of a memory report.
fn workers(report: &MemoryReport) -> impl Iterator<Item = &MemoryUsage> {
    report
        .entries()
        .iter()
        .filter(|e| e.role.starts_with("worker"))
}
