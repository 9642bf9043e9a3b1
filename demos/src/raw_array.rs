//! Method 5 of the notes: `sharedctypes.RawArray` + `Pool(initializer=...)`,
//! the notes' first example.
//!
//! A 2000 x 10 array of doubles in shared memory; a pool of 4 workers whose
//! initializer stores the array's handle in a global (the notes' `_init(arr)`
//! does `global arr; arr = arr_to_populate`); a map of
//! `populate(offset, blocksize)` over blocks of 100 rows, each setting its
//! rows to `offset`. The parent then checks row by row that row `i` holds
//! `floor(i / 100) * 100` in every column.
//!
//! One thing is added to the notes: the parent first marks every element
//! unwritten (-1), since block 0 is set to 0, the value a fresh array already
//! holds, and a block no worker wrote would otherwise pass.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::SharedArray;

use crate::common::{self, bytes, fact, phase};

/// What every element holds before the workers run: no block's offset
/// (offsets are never negative), so an unwritten row cannot pass.
const UNWRITTEN: f64 = -1.0;

/// Options of the `raw-array` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 2000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 10).
    #[arg(long, default_value_t = 10)]
    cols: usize,
    /// Rows per task: each `populate(offset, blocksize)` sets this many rows
    /// (the notes: 100; the last block is shorter if it does not divide
    /// --rows).
    #[arg(long, default_value_t = 100)]
    blocksize: usize,
    /// Worker processes (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
}

// ANCHOR: worker
/// The notes' global `arr`: set once in every worker by [`init`].
static ARR: OnceLock<SharedArray<f64>> = OnceLock::new();

/// The notes' `_init(arr_to_populate)`: each pool process calls this
/// initializer, which stores the array in that process's globals.
fn init(arr_to_populate: SharedArray<f64>) {
    ARR.set(arr_to_populate)
        .expect("a worker runs its initializer once");
}

/// The notes' `populate(args)`: sets every element of rows
/// `[offset, offset + blocksize)` of the shared array to `offset`. Returns
/// the offset, and this worker's pid to show who did the work.
fn populate((offset, blocksize): (usize, usize)) -> (usize, i32) {
    let arr = ARR.get().expect("the initializer stored the array");
    arr.fill_rows(offset..offset + blocksize, offset as f64);
    (offset, std::process::id() as i32)
}
// ANCHOR_END: worker

/// The value every element of row `row` should hold: the offset of its block.
fn expected(row: usize, blocksize: usize) -> f64 {
    (row / blocksize * blocksize) as f64
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, blocksize, processes) = (args.rows, args.cols, args.blocksize, args.processes);
    ensure!(
        rows > 0 && cols > 0 && blocksize > 0 && processes > 0,
        "--rows, --cols, --blocksize and --processes must all be at least 1 \
         (got {rows}, {cols}, {blocksize}, {processes})"
    );
    ensure!(
        rows < 1 << 53,
        "--rows {rows} is too large: row offsets must be exact in an f64"
    );
    let size = common::array_bytes(rows, cols, 8)?;
    let blocks = rows.div_ceil(blocksize);
    common::heading(
        "raw-array",
        "RawArray + initializer: populate(offset, blocksize) through a global",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact(
        "tasks",
        format!("{blocks} blocks of {blocksize} rows on {processes} processes"),
    );
    common::ensure_memory(
        size,
        "the shared array",
        "use smaller --rows/--cols, or the file-backed array of the memmap demo",
    )?;

    // ANCHOR: create
    let (arr, _) = phase("create the shared array", Some(size), || {
        SharedArray::<f64>::new(&[rows, cols])
    });
    let arr = arr.context("creating the shared array")?;
    phase("mark every element unwritten", Some(size), || {
        arr.fill(UNWRITTEN)
    });
    let (pool, _) = phase("start the pool (initializer)", None, || {
        let arr = arr.clone();
        Pool::builder()
            .processes(processes)
            .initializer(move || init(arr.clone()))
            .build()
    });
    let pool = pool.context("starting the pool")?;
    // ANCHOR_END: create

    // ANCHOR: map
    let tasks: Vec<(usize, usize)> = (0..rows)
        .step_by(blocksize)
        .map(|offset| (offset, blocksize.min(rows - offset)))
        .collect();
    let bar = common::progress(blocks as u64, "populate blocks");
    let (done, _) = phase("populate every block", Some(size), || {
        let it = pool.progress_bar(bar).imap_unordered(populate, tasks, 1);
        it.collect::<Vec<_>>()
    });
    // ANCHOR_END: map
    let mut offsets = Vec::with_capacity(blocks);
    let mut blocks_by_pid: BTreeMap<i32, usize> = BTreeMap::new();
    for r in done {
        let (offset, pid) = r.context("a populate task failed")?;
        offsets.push(offset);
        *blocks_by_pid.entry(pid).or_default() += 1;
    }
    let tally: Vec<String> = blocks_by_pid
        .iter()
        .map(|(pid, n)| format!("{pid}: {n}"))
        .collect();
    fact("blocks per worker pid", tally.join(", "));

    let report = common::memory_table("memory while the workers hold the array", Some(&pool), &[])?;
    let in_memory = common::array_pages(&report, size);

    // ANCHOR: verify
    let bar = common::progress(rows as u64, "verify row by row");
    let (checked, _) = phase("verify row by row", Some(size), || {
        for row in 0..rows {
            let want = expected(row, blocksize);
            if let Some((col, found)) = arr
                .iter_rows(row..row + 1)
                .enumerate()
                .find(|&(_, v)| v != want)
            {
                let what = if found == UNWRITTEN {
                    "never written".to_string()
                } else {
                    format!("holds {found}")
                };
                anyhow::bail!("row {row}, column {col} {what}: expected {want}");
            }
            if row % 1024 == 1023 {
                bar.inc(1024);
            }
        }
        Ok(rows)
    });
    bar.finish_and_clear();
    let checked = checked?;
    offsets.sort_unstable();
    ensure!(
        offsets == (0..rows).step_by(blocksize).collect::<Vec<_>>(),
        "populate returned offsets {offsets:?}, not one per block"
    );
    let shown: Vec<String> = [0, blocksize.min(rows - 1), rows - 1]
        .iter()
        .map(|&r| format!("row {r}: {}", arr.get_at(&[r, 0])))
        .collect();
    fact("final_arr", shown.join(", "));
    common::one_copy(in_memory, size)?;
    common::verified(format!(
        "{checked} rows each hold their block's offset, {blocks} blocks populated \
         by {} workers, one copy in memory",
        blocks_by_pid.len()
    ));
    // ANCHOR_END: verify
    pool.close();
    pool.join()?;
    Ok(())
}
