//! Method 7 of the notes: a large random matrix filled in parallel, each
//! worker with its own generator (the notes: 10 000 x 320 000 doubles, 53 s
//! serially against 29 s on 4 processes).
//!
//! Seeding one generator per *worker* makes the array depend on how many
//! workers filled it, and on which worker got which rows. Here every *row*
//! has its own stream of a counter-based generator (Philox4x32-10, see
//! [`crate::philox`]): the master `--seed` is the key and the row index is
//! part of the counter, so row `r` holds the same numbers whoever fills it.
//! The demo fills the array serially in the parent, then in parallel in a
//! pool, and checks the two are bit-identical; then again with other worker
//! counts (by default 1 and `processes + 1`).
//!
//! Where the time goes is printed phase by phase. Creating the two arrays
//! allocates, zeroes and maps their pages on every core (forkpool-shm
//! populates new arrays in bulk), so the serial fill in the parent takes no
//! page fault; each worker maps its rows in one call
//! (`MADV_POPULATE_WRITE`) before its hot loop, since a process takes a
//! fault per 4 KiB page of a shared array the first time it touches it,
//! even when another process made the page.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::{Partitioned, SharedArray, ShmError};
use serde::{Deserialize, Serialize};

use crate::common::{self, bytes, fact, phase};

/// Options of the `random-fill` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 320000, 25.6 GB; the demo holds
    /// two arrays, the serial and the parallel one).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Worker processes of the parallel fill (the notes: 4).
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Master seed: the key of every row's Philox stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fill again with these worker counts and check the array is the same
    /// each time, e.g. `1,3,8` (default: 1 and processes + 1).
    #[arg(long, value_delimiter = ',')]
    check_processes: Vec<usize>,
}

// ANCHOR: kernel
/// Fills `out` with the random doubles of row `row`: uniform in `[0, 1)`,
/// stream `row` of the counter-based generator Philox4x32-10 keyed by
/// `seed` (see [`crate::philox`]).
///
/// The numbers depend only on `(seed, row)` and the column, never on which
/// process or thread calls this, in what order, or on which CPU: that is
/// what makes a parallel fill bit-identical to a serial one. Element `c`
/// comes from block `c / 2` of the row's stream; a prefix of a longer row
/// is the shorter row.
///
/// # Examples
///
/// ```
/// let mut a = vec![0.0; 1000];
/// let mut b = vec![0.0; 1000];
/// demos::random_fill::fill_row(42, 7, &mut a);
/// demos::random_fill::fill_row(42, 7, &mut b);
/// assert_eq!(a, b); // the same row, the same numbers
/// demos::random_fill::fill_row(42, 8, &mut b);
/// assert_ne!(a, b); // another row, another stream
/// assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
/// ```
pub fn fill_row(seed: u64, row: u64, out: &mut [f64]) {
    crate::philox::fill_unit(seed, row, out);
}
// ANCHOR_END: kernel

// ANCHOR: worker
/// What a worker needs: the array to fill and the master seed. Set by the
/// pool's initializer in each worker (the parent never sets it).
static JOB: OnceLock<(SharedArray<f64, Partitioned>, u64)> = OnceLock::new();

/// What a worker reports for one block of rows.
#[derive(Debug, Serialize, Deserialize)]
struct Block {
    pid: i32,
    rows: usize,
    prefault: Duration,
    fill: Duration,
}

/// Fills rows `[start, end)`: claims them, pre-faults their pages in one
/// call, then runs the row kernel over them.
fn fill_block((start, end): (usize, usize)) -> Result<Block, String> {
    let (array, seed) = JOB.get().expect("the initializer sets the job");
    let block = array.with_rows_mut(start..end, |rows| {
        let t0 = Instant::now();
        rows.prefault()?;
        let t1 = Instant::now();
        for (i, out) in rows.chunks_mut(array.row_len()).enumerate() {
            fill_row(*seed, (start + i) as u64, out);
        }
        Ok(Block {
            pid: std::process::id() as i32,
            rows: end - start,
            prefault: t1 - t0,
            fill: t1.elapsed(),
        })
    });
    block.and_then(|b| b).map_err(|e: ShmError| e.to_string())
}
// ANCHOR_END: worker

/// The outcome of one parallel fill.
struct Parallel {
    /// Wall-clock time, from the first task sent to the last result.
    took: Duration,
    /// Rows filled by each worker pid.
    rows_by_pid: BTreeMap<i32, usize>,
    /// Worker time spent pre-faulting, and filling, summed over workers.
    prefault: Duration,
    fill: Duration,
}

/// Starts a pool of `processes` workers whose initializer hands them
/// `array` and `seed`.
fn start_pool(
    processes: usize,
    array: &SharedArray<f64, Partitioned>,
    seed: u64,
) -> anyhow::Result<Pool> {
    let for_workers = array.clone();
    Pool::builder()
        .processes(processes)
        .initializer(move || {
            JOB.set((for_workers.clone(), seed))
                .expect("a worker runs its initializer once");
        })
        .build()
        .context("starting the pool")
}

// ANCHOR: parallel
/// Fills `array` with `pool`: the rows are cut into about four blocks per
/// worker, handed out as they finish.
fn parallel_fill(
    pool: &Pool,
    array: &SharedArray<f64, Partitioned>,
    what: &str,
) -> anyhow::Result<Parallel> {
    let blocks: Vec<(usize, usize)> = array
        .row_blocks(pool.processes() * 4)
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| (r.start, r.end))
        .collect();
    let bar = common::progress(blocks.len() as u64, what);
    let t0 = Instant::now();
    let mut done = Parallel {
        took: Duration::ZERO,
        rows_by_pid: BTreeMap::new(),
        prefault: Duration::ZERO,
        fill: Duration::ZERO,
    };
    for outcome in pool.progress_bar(bar).imap_unordered(fill_block, blocks, 1) {
        let block = outcome
            .context("a worker failed")?
            .map_err(|e| anyhow::anyhow!("a worker could not fill its rows: {e}"))?;
        *done.rows_by_pid.entry(block.pid).or_default() += block.rows;
        done.prefault += block.prefault;
        done.fill += block.fill;
    }
    done.took = t0.elapsed();
    Ok(done)
}
// ANCHOR_END: parallel

/// The first element where `a` and `b` differ bit for bit, as (row, col):
/// a whole-array pass, split over the parent's threads.
fn first_difference(
    a: &SharedArray<f64, Partitioned>,
    b: &SharedArray<f64, Partitioned>,
) -> anyhow::Result<Option<(usize, usize)>> {
    let cols = a.shape()[1];
    let first = a.with_rows(0..a.nrows(), |a| {
        b.with_rows(0..b.nrows(), |b| {
            let (a, b): (&[f64], &[f64]) = (a, b);
            let threads = crate::passes::default_threads();
            let firsts = crate::passes::on_row_blocks(a.len() / cols, threads, |rows| {
                let span = rows.start * cols..rows.end * cols;
                a[span.clone()]
                    .iter()
                    .zip(&b[span])
                    .position(|(p, q)| p.to_bits() != q.to_bits())
                    .map(|i| (rows.start + i / cols, i % cols))
            });
            firsts.into_iter().flatten().next()
        })
    })??;
    Ok(first)
}

/// A 64-bit digest of the values' bits, in order: equal arrays give equal
/// digests, so runs with different worker counts (or on MPI ranks, see
/// `forkpool-mpi`'s `random_fill` example) can be compared. (A fast
/// multiply-rotate hash, not a cryptographic one.)
///
/// # Examples
///
/// ```
/// use demos::random_fill::{Digest, digest};
/// let values = [0.25, 0.5, 0.75];
/// // Fed in pieces, in order, it is the digest of the whole.
/// let mut d = Digest::new();
/// d.update(&values[..1]);
/// d.update(&values[1..]);
/// assert_eq!(d.finish(), digest(&values));
/// assert_ne!(digest(&values), digest(&[0.75, 0.5, 0.25]));
/// ```
pub fn digest(values: &[f64]) -> u64 {
    let mut d = Digest::new();
    d.update(values);
    d.finish()
}

/// The [`digest`] of an array fed in pieces (row blocks, in order), for
/// arrays that no one process holds whole.
#[derive(Clone, Copy, Debug)]
pub struct Digest(u64);

impl Digest {
    /// The digest of no values yet.
    pub fn new() -> Self {
        Digest(0x9e37_79b9_7f4a_7c15)
    }

    /// Folds `values` in, after those already fed.
    pub fn update(&mut self, values: &[f64]) {
        self.0 = values.iter().fold(self.0, |h: u64, x| {
            (h ^ x.to_bits())
                .wrapping_mul(0x0100_0000_01b3_0001)
                .rotate_left(29)
        });
    }

    /// The digest of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

/// "1 worker", "3 workers".
fn workers(n: usize) -> String {
    if n == 1 {
        "1 worker".to_owned()
    } else {
        format!("{n} workers")
    }
}

/// Prints a parallel fill's figures.
fn report(label: &str, p: &Parallel, size: u64) {
    fact(
        label,
        format!(
            "{:.3} s   {}",
            p.took.as_secs_f64(),
            common::rate(size, p.took)
        ),
    );
    let per_worker: Vec<String> = p.rows_by_pid.values().map(|r| r.to_string()).collect();
    fact(
        "  worker time: page faults",
        format!(
            "{:.3} s (pre-faulted in bulk, {})",
            p.prefault.as_secs_f64(),
            common::rate(size, p.prefault)
        ),
    );
    fact(
        "  worker time: generate",
        format!("{:.3} s", p.fill.as_secs_f64()),
    );
    fact("  rows per worker", per_worker.join(" + "));
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes, seed) = (args.rows, args.cols, args.processes, args.seed);
    let size = common::f64_rows_for(rows, cols, processes)?;
    let checks: Vec<usize> = if args.check_processes.is_empty() {
        vec![1, processes + 1]
    } else {
        args.check_processes.clone()
    };
    ensure!(
        checks.iter().all(|&n| n > 0),
        "--check-processes takes worker counts of at least 1 (got {checks:?})"
    );
    common::heading(
        "random-fill",
        "serial against parallel random fill, one Philox stream per row",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", processes);
    fact(
        "seed",
        format!("{seed} (Philox4x32-10 key, stream = row index)"),
    );
    fact(
        "generator kernel",
        format!("{} (the CPU's widest)", crate::philox::Simd::best().name()),
    );

    common::ensure_memory(
        2 * size,
        &format!(
            "holding a serial and a parallel array of {} each",
            bytes(size)
        ),
        "use fewer --rows or --cols",
    )?;

    // ANCHOR: create
    let (arrays, _) = phase("create 2 arrays + populate", Some(2 * size), || {
        Ok::<_, forkpool_shm::ShmError>((
            SharedArray::<f64, Partitioned>::new(&[rows, cols])?,
            SharedArray::<f64, Partitioned>::new(&[rows, cols])?,
        ))
    });
    let (serial, parallel) = arrays
        .context("creating the serial and the parallel arrays (both must fit in memory at once)")?;
    // The workers inherit the parallel array through the initializer.
    let (pool, _) = phase("start the pool", None, || {
        start_pool(processes, &parallel, seed)
    });
    let pool = pool?;
    // ANCHOR_END: create

    // ANCHOR: serial
    // The parent created the array: its pages are mapped here already (the
    // creation populated them), so the serial fill takes no page fault.
    let bar = common::progress(rows as u64, "serial fill");
    let (_, serial_fill) = serial.with_rows_mut(0..rows, |all| {
        phase("serial: generate", Some(size), || {
            for (r, out) in all.chunks_mut(cols).enumerate() {
                fill_row(seed, r as u64, out);
                bar.inc(1);
            }
        })
    })?;
    bar.finish_and_clear();
    let serial_took = serial_fill;
    fact(
        "serial fill",
        format!(
            "{:.3} s   {}",
            serial_took.as_secs_f64(),
            common::rate(size, serial_took)
        ),
    );
    // ANCHOR_END: serial

    let main = parallel_fill(&pool, &parallel, "parallel fill")?;
    report(
        &format!("parallel fill, {}", workers(processes)),
        &main,
        size,
    );
    let speedup = serial_took.as_secs_f64() / main.took.as_secs_f64();
    fact(
        "speedup",
        format!("{speedup:.2}x on {processes} processes (the notes: 53 s / 29 s = 1.83x on 4)"),
    );
    fact(
        "array data through the pipes",
        "0 B (tasks carry row ranges)",
    );

    // ANCHOR: compare
    let (diff, _) = phase("compare, on threads", Some(2 * size), || {
        first_difference(&serial, &parallel)
    });
    if let Some((r, c)) = diff? {
        anyhow::bail!(
            "the parallel fill differs from the serial one at row {r}, column {c}: \
             the streams are not per row"
        );
    }
    // ANCHOR_END: compare

    let report_mem =
        common::memory_table("memory while the workers hold the array", Some(&pool), &[])?;
    let total = report_mem.total();
    fact(
        "shared pages, summed PSS",
        format!(
            "{} = {:.2}x one array (serial + parallel: 2x)",
            bytes(total.pss_shmem),
            total.pss_shmem as f64 / size as f64
        ),
    );
    pool.close();
    pool.join()?;

    // The same numbers whatever the number of workers.
    for &n in &checks {
        parallel.with_rows_mut(0..rows, |all| all.fill(f64::NAN))?;
        let pool = start_pool(n, &parallel, seed)?;
        let again = parallel_fill(&pool, &parallel, &format!("fill with {}", workers(n)))?;
        pool.close();
        pool.join()?;
        report(&format!("parallel fill, {}", workers(n)), &again, size);
        if let Some((r, c)) = first_difference(&serial, &parallel)? {
            anyhow::bail!(
                "the fill with {} differs from the serial one at row {r}, column {c}",
                workers(n)
            );
        }
    }

    // ANCHOR: verify
    let (in_range, mean, digest, distinct_starts, len) = serial.with_rows(0..rows, |values| {
        let starts: HashSet<u64> = values.chunks(cols).map(|row| row[0].to_bits()).collect();
        (
            values.iter().all(|x| (0.0..1.0).contains(x)),
            values.iter().sum::<f64>() / values.len() as f64,
            digest(values),
            starts.len(),
            values.len(),
        )
    })?;
    ensure!(in_range, "values outside [0, 1)");
    let tolerance = (6.0 * 0.2887 / (len as f64).sqrt()).max(0.01);
    ensure!(
        (mean - 0.5).abs() < tolerance,
        "the mean of the values is {mean}, not about 0.5: not uniform in [0, 1)"
    );
    fact(
        "array digest",
        format!("{digest:016x} (the same for any --processes)"),
    );
    ensure!(
        distinct_starts == rows,
        "only {distinct_starts} distinct first values over {rows} rows: rows share a stream"
    );
    ensure!(
        main.rows_by_pid.len() == processes,
        "{} of {processes} workers filled rows",
        main.rows_by_pid.len()
    );
    // One copy of each array, not one per process.
    ensure!(
        total.pss_shmem <= 2 * size + size / 10 + (16 << 20),
        "the arrays' pages sum to {} over the processes, more than the two arrays of {} each",
        bytes(total.pss_shmem),
        bytes(size)
    );
    let counts: Vec<String> = checks.iter().map(|n| n.to_string()).collect();
    common::verified(format!(
        "serial and parallel fills bit-identical with {processes} and with {} workers, \
         {} values in [0, 1), mean {mean:.4}, {rows} distinct row streams",
        counts.join(", "),
        len
    ));
    // ANCHOR_END: verify
    Ok(())
}
