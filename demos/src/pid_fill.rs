//! Method 6 of the notes: `multiprocessing.Array(lock=False)` + `np.frombuffer().reshape()`:
//! the book example of the notes.
//!
//! A 2-D array of doubles in shared memory is filled with 42 by the parent;
//! a pool of forked workers maps over the row indices; each worker checks
//! its row still holds 42 (so no other process wrote it) and overwrites it
//! with its pid. The parent then counts every value: no 42 may remain,
//! every item must be counted, and every worker must have done some rows.
//! The memory table, taken while the workers still map the array, shows
//! one copy summed over all processes.
//!
//! The phases say where the time goes. Creating the array allocates,
//! zeroes and maps every page on all cores at once, and writes the 42s as
//! it goes ([`SharedArray::full`]: each thread fills 256 KiB of new pages
//! while they are still in its cache, so the array is written once, not
//! zeroed in one pass and filled in another); the verification is a
//! whole-array pass split over the parent's threads ([`crate::passes`],
//! `--threads`); each worker maps a row's pages in one call before
//! touching it. A file-backed array (`--file`) is created, then filled in
//! a separate pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use comfy_table::{CellAlignment, Table, presets};
use forkpool::Pool;
use forkpool_shm::{ArrayOptions, Atomic, SharedArray};

use crate::common::{self, DEFAULT_VALUE, bytes, fact, phase};
use crate::passes;

/// Options of the `pid-fill` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 320000, 25.6 GB in all).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Worker processes (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Threads of the parent's whole-array passes (fill with 42, verify);
    /// default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Keep the array in this file instead of anonymous shared memory (for
    /// arrays larger than the memory available).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Args {
    /// The options for a `rows x cols` array and `processes` workers, the
    /// rest at their defaults (for running the demo from other programs,
    /// such as the benchmark runner).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let args = demos::pid_fill::Args::new(2000, 32_000, 2);
    /// let timings = demos::pid_fill::run_timed(&args)?;
    /// println!("create -> verified in {:?}", timings.total);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn new(rows: usize, cols: usize, processes: usize) -> Args {
        Args {
            rows,
            cols,
            processes,
            threads: None,
            file: None,
        }
    }
}

// ANCHOR: worker
/// The shared array, a global set before the pool forks: every worker
/// inherits it, as the notes' workers inherit `main_nparray`. (A lock rather
/// than a `OnceLock` so the parent can drop it when the demo ends.)
static ARRAY: RwLock<Option<SharedArray<f64>>> = RwLock::new(None);

/// The notes' `worker_fn`: checks that row `idx` still holds the default
/// value, then overwrites it with this worker's pid.
fn worker_fn(idx: usize) -> (i32, bool) {
    let guard = ARRAY.read().unwrap_or_else(|e| e.into_inner());
    let array = guard
        .as_ref()
        .expect("the array is set before the pool forks");
    let pid = f64::from(std::process::id());
    // Map the row's pages in one call rather than one fault per 4 KiB page
    // (a forked worker has none of them mapped). Only a speed-up: if it
    // fails, the loop below faults the pages in as usual.
    let _ = array.prefault(idx..idx + 1);
    // SAFETY: the pool hands each row index to exactly one task, and runs a
    // task in one process at a time; the parent reads no row until every
    // task has returned. So while `row` lives, no other thread or process
    // reads or writes row `idx`: an exclusive slice, which the compiler
    // may check and overwrite with vector instructions, as numpy does.
    let row = unsafe { array.rows_mut_unchecked(idx..idx + 1) };
    // Check and overwrite each value in one pass over the row.
    let mut untouched = true;
    for v in row.iter_mut() {
        untouched &= *v == DEFAULT_VALUE;
        *v = pid;
    }
    (pid as i32, untouched)
}
// ANCHOR_END: worker

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    run_timed(args).map(drop)
}

/// The time of each phase of one run of the demo, and from creating the
/// array to the verified result (the notes' program end to end; closing
/// the pool is not counted).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Creating the array (for an anonymous array, filled with 42 too).
    pub create: Duration,
    /// Filling it with 42 in a separate pass (a file-backed array only).
    pub fill: Duration,
    /// Starting the pool.
    pub start_pool: Duration,
    /// The workers checking their rows and writing their pids.
    pub workers: Duration,
    /// Counting every value.
    pub verify: Duration,
    /// Create -> verified.
    pub total: Duration,
}

impl Timings {
    /// The phases by the names the notes' Python program
    /// (`benches/python/pid_fill.py`) gives them, in order.
    pub fn phases(&self) -> [(&'static str, Duration); 5] {
        [
            ("create", self.create),
            ("fill with 42", self.fill),
            ("start the pool", self.start_pool),
            ("workers write their pids", self.workers),
            ("verify", self.verify),
        ]
    }
}

/// Runs the demo and returns how long each phase took.
pub fn run_timed(args: &Args) -> anyhow::Result<Timings> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let threads = args.threads.unwrap_or_else(passes::default_threads);
    ensure!(threads > 0, "--threads takes at least 1");
    let size = common::f64_rows_for(rows, cols, processes)?;
    common::heading(
        "pid-fill",
        "Array(lock=False) shared by forked workers, each row set to a pid",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", processes);
    fact("threads of the passes", threads);

    // ANCHOR: create
    let started = Instant::now();
    let mut timings = Timings::default();
    let array = match &args.file {
        None => {
            // numpy's `np.full((rows, cols), 42.0)`: populated and filled
            // in one pass on every core.
            let (array, took) = common::try_phase("create filled with 42", Some(size), || {
                SharedArray::<f64>::full(&[rows, cols], DEFAULT_VALUE)
            })
            .context("creating the shared array")?;
            timings.create = took;
            array
        }
        Some(path) => {
            let (array, took) = common::try_phase("create (a file)", Some(size), || {
                // SAFETY: the file is created here, and only this program and
                // the processes it forks map it while the demo runs.
                unsafe { ArrayOptions::new().create_file::<f64, Atomic>(path, &[rows, cols]) }
            })
            .context("creating the shared array")?;
            timings.create = took;
            let (_, took) = phase(&format!("fill with 42, {threads} thr."), Some(size), || {
                passes::on_row_blocks(rows, threads, |r| array.fill_rows(r, DEFAULT_VALUE))
            });
            timings.fill = took;
            array
        }
    };
    *ARRAY.write().unwrap_or_else(|e| e.into_inner()) = Some(array.clone());
    let _release = Release; // the parent lets go of it when the demo ends
    let (pool, took) = common::try_phase("start the pool", None, || Pool::new(processes))?;
    timings.start_pool = took;
    // ANCHOR_END: create

    // ANCHOR: map
    let chunksize = (rows / (processes * 16)).max(1);
    let bar = common::progress(rows as u64, "workers write their pid");
    let (outcomes, took) = phase("workers write their pids", Some(size), || {
        let it = pool
            .progress_bar(bar)
            .imap_unordered(worker_fn, 0..rows, chunksize);
        it.collect::<Vec<_>>()
    });
    timings.workers = took;
    // ANCHOR_END: map
    let mut rows_by_pid: BTreeMap<i32, usize> = BTreeMap::new();
    for outcome in outcomes {
        let (pid, untouched) = outcome.context("a worker failed")?;
        ensure!(
            untouched,
            "worker {pid} found a row already written: two processes wrote one row"
        );
        *rows_by_pid.entry(pid).or_default() += 1;
    }
    fact(
        "rows per second",
        format!("{:.0}", rows as f64 / took.as_secs_f64()),
    );

    // ANCHOR: verify
    let (counts, took) = phase(
        &format!("verify (count), {threads} thr."),
        Some(size),
        || {
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for block in passes::on_row_blocks(rows, threads, |r| count_values(&array, r)) {
                for (value, n) in block {
                    *counts.entry(value).or_default() += n;
                }
            }
            counts
        },
    );
    timings.verify = took;
    timings.total = started.elapsed();
    fact(
        "create -> verified",
        format!(
            "{:.3} s (the notes' program end to end)",
            timings.total.as_secs_f64()
        ),
    );
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(["PID", "Count"]);
    for (value, count) in &counts {
        table.add_row([f64::from_bits(*value).to_string(), count.to_string()]);
    }
    for column in table.column_iter_mut() {
        column.set_cell_alignment(CellAlignment::Right);
    }
    for line in table.trim_fmt().lines() {
        println!("   {line}");
    }
    let report = common::memory_table("memory while the workers hold the array", Some(&pool), &[])?;
    let total = report.total();
    let in_memory = total.pss_shmem + total.pss_file;
    fact(
        "array pages, summed PSS",
        format!(
            "{} = {:.3}x the array",
            bytes(in_memory),
            in_memory as f64 / size as f64
        ),
    );
    let counted: u64 = counts.values().sum();
    ensure!(
        !counts.contains_key(&DEFAULT_VALUE.to_bits()),
        "{} items still hold the default 42",
        counts[&DEFAULT_VALUE.to_bits()]
    );
    ensure!(
        counted == (rows * cols) as u64,
        "counted {counted} items of {}",
        rows * cols
    );
    let pids: Vec<f64> = rows_by_pid.keys().map(|&p| f64::from(p)).collect();
    ensure!(
        counts.keys().all(|v| pids.contains(&f64::from_bits(*v))),
        "the array holds values that are not the workers' pids"
    );
    ensure!(
        counts.len() == processes,
        "{} workers did work, expected all {processes}",
        counts.len()
    );
    // One copy, not one per process: the array's pages, summed over all
    // processes by PSS, come to one array (and a little slack).
    ensure!(
        in_memory <= size + size / 20 + (16 << 20),
        "the array's pages sum to {} over the processes, more than one copy of {}",
        bytes(in_memory),
        bytes(size)
    );
    common::verified(format!(
        "no 42 left, {counted} items counted, {} workers did work, one copy in memory",
        counts.len()
    ));
    // ANCHOR_END: verify
    pool.close();
    pool.join()?;
    Ok(timings)
}

/// How many times each value (by its bits) occurs in rows `rows`. A row
/// that holds one value throughout (each worker writes whole rows) costs
/// one vectorised comparison pass and one map update; any other row is
/// counted value by value.
fn count_values(array: &SharedArray<f64>, rows: std::ops::Range<usize>) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for r in rows {
        // SAFETY: the verification runs after every worker's task has
        // returned, and nothing writes the array until it ends: no thread or
        // process writes row `r` while this slice lives.
        let row = unsafe { array.rows_unchecked(r..r + 1) };
        let Some(first) = row.first().map(|v| v.to_bits()) else {
            continue;
        };
        let same = row.iter().filter(|v| v.to_bits() == first).count();
        if same == row.len() {
            *counts.entry(first).or_default() += same as u64;
        } else {
            for v in row {
                *counts.entry(v.to_bits()).or_default() += 1;
            }
        }
    }
    counts
}

/// Empties [`ARRAY`] when dropped, however the demo ends.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        ARRAY.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_values_counts_uniform_rows_whole_and_mixed_rows_value_by_value() {
        let array = SharedArray::<f64>::full(&[4, 5], DEFAULT_VALUE).unwrap();
        array.fill_row(0, 7.0);
        array.set_at(&[2, 3], 7.0); // a row of 42s with one 7 in it
        array.set_at(&[3, 0], -0.0); // differs from 0.0 only by its bits
        array.set_at(&[3, 1], 0.0);
        let counts = count_values(&array, 0..4);
        let expected: BTreeMap<u64, u64> = [
            (7f64.to_bits(), 6),
            (DEFAULT_VALUE.to_bits(), 12),
            ((-0f64).to_bits(), 1),
            (0f64.to_bits(), 1),
        ]
        .into();
        assert_eq!(counts, expected);
        assert!(count_values(&array, 1..1).is_empty());
    }
}
