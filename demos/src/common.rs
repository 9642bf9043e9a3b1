//! What every demo prints: a heading, timed phases with their sizes and
//! rates, facts, progress bars, and the per-process memory table.
//!
//! Output format (the tests in `demos/tests/` read it):
//!
//! ```text
//! == pid-fill: Array(lock=False) shared by forked workers
//!    array                        2000 x 32000 f64 = 488.3 MiB
//!    create                       0.061 s   8.0 GiB/s
//!    ...
//! memory while the workers hold the array:
//!      pid  role      RSS  PSS  shared  private
//!    ...
//! verified: no 42 left, 64000000 items counted, 2 workers did work
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context;
use forkpool::Pool;
use forkpool_shm::{ByteSize, MemoryReport, Pid};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The value the notes fill arrays with before the workers run.
pub const DEFAULT_VALUE: f64 = 42.0;

/// Prints a demo's heading.
pub fn heading(name: &str, what: &str) {
    println!("== {name}: {what}");
}

/// Prints one aligned `label value` line.
pub fn fact(label: &str, value: impl Display) {
    println!("   {label:<28} {value}");
}

/// Human-readable bytes (binary units).
pub fn bytes(n: u64) -> ByteSize {
    ByteSize(n)
}

/// A rate in bytes per second, human-readable.
pub fn rate(n: u64, took: Duration) -> String {
    let secs = took.as_secs_f64().max(1e-9);
    format!("{}/s", ByteSize((n as f64 / secs) as u64))
}

/// Runs `f` as a phase called `label`, prints its time (and its rate if it
/// moves `moved` bytes), and returns its value and duration.
pub fn phase<T>(label: &str, moved: Option<u64>, f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let value = f();
    let took = t0.elapsed();
    print_phase(label, moved, took);
    (value, took)
}

/// Prints a phase's time, and its rate if it moved `moved` bytes.
fn print_phase(label: &str, moved: Option<u64>, took: Duration) {
    match moved {
        Some(n) => fact(
            label,
            format!("{:.3} s   {}", took.as_secs_f64(), rate(n, took)),
        ),
        None => fact(label, format!("{:.3} s", took.as_secs_f64())),
    }
}

/// Like [`phase`], for a phase that can fail: prints its time and rate
/// only if it succeeded (a failed phase moved nothing); the error is the
/// caller's to report.
pub fn try_phase<T, E>(
    label: &str,
    moved: Option<u64>,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<(T, Duration), E> {
    let t0 = Instant::now();
    let value = f()?;
    let took = t0.elapsed();
    print_phase(label, moved, took);
    Ok((value, took))
}

/// The size of a `rows x cols` array of `elem`-byte elements, refusing
/// sizes that overflow.
pub fn array_bytes(rows: usize, cols: usize, elem: usize) -> anyhow::Result<u64> {
    rows.checked_mul(cols)
        .and_then(|n| n.checked_mul(elem))
        .map(|n| n as u64)
        .with_context(|| {
            format!("an array of {rows} x {cols} elements of {elem} bytes is too large")
        })
}

/// Checks the size options shared by the demos that split rows among
/// workers, and returns the size of the `rows x cols` array of `f64`.
pub fn f64_rows_for(rows: usize, cols: usize, processes: usize) -> anyhow::Result<u64> {
    anyhow::ensure!(
        cols > 0 && processes > 0 && rows >= processes,
        "need --cols >= 1, --processes >= 1 and at least one row per process \
         (--rows {rows}, --processes {processes})"
    );
    array_bytes(rows, cols, 8)
}

/// Checks that every element of a `rows x cols` array can hold its own
/// 1-based position exactly as an `f64` (the demos that verify each value).
pub fn numbered_exactly(rows: usize, cols: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (rows * cols) < 1 << 53,
        "{rows} x {cols} elements are too many to number exactly in an f64"
    );
    Ok(())
}

/// A progress bar of `len` steps on stderr; hidden when stderr is not a
/// terminal, so logs and tests see only the results; cleared when done.
/// Give it to a map-like call with `pool.progress_bar(bar)`.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_finish(ProgressFinish::AndClear);
    bar.set_style(
        ProgressStyle::with_template("   {msg:<28} [{bar:20}] {pos}/{len} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Reads and prints the memory table of this process, the pool's zygote and
/// workers, and `extra` processes, under `title`. Take it while the workers
/// still hold the array.
pub fn memory_table(
    title: &str,
    pool: Option<&Pool>,
    extra: &[(Pid, &str)],
) -> anyhow::Result<MemoryReport> {
    let mut report = MemoryReport::new();
    report.add(Pid::this(), "parent")?;
    if let Some(pool) = pool {
        report.add(pool.zygote_pid(), "zygote")?;
        for (i, pid) in pool.worker_pids().into_iter().enumerate() {
            report.add(pid, format!("worker {}", i + 1))?;
        }
    }
    for &(pid, role) in extra {
        report.add(pid, role)?;
    }
    println!("{title}:");
    for line in report.to_string().lines() {
        println!("   {line}");
    }
    Ok(report)
}

/// The rows each worker filled, from the `(pid, rows)` its tasks returned
/// (a task that failed is an error naming what failed); printed as a
/// `rows per worker pid` line.
pub fn rows_per_pid<E: Display>(
    filled: Vec<forkpool::Result<Result<(i32, usize), E>>>,
) -> anyhow::Result<BTreeMap<i32, usize>> {
    let mut rows_by_pid: BTreeMap<i32, usize> = BTreeMap::new();
    for r in filled {
        let (pid, n) = r
            .context("a fill task failed")?
            .map_err(|e| anyhow::anyhow!("a worker could not fill its rows: {e}"))?;
        *rows_by_pid.entry(pid).or_default() += n;
    }
    let tally: Vec<String> = rows_by_pid
        .iter()
        .map(|(pid, n)| format!("{pid}: {n}"))
        .collect();
    fact("rows per worker pid", tally.join(", "));
    Ok(rows_by_pid)
}

/// Prints the verdict line; the demo's checks have passed when it is
/// called.
pub fn verified(what: impl Display) {
    println!("verified: {what}");
}

/// The pages of an anonymous shared array (a memfd) summed over the
/// processes of `report`: their PSS in shared memory (each page counts
/// once, however many processes map it). Prints it as a multiple of the
/// array's `size` and returns it. (File-backed arrays count in `pss_file`,
/// with the program's own code: measure those by mapping.)
pub fn array_pages(report: &MemoryReport, size: u64) -> u64 {
    let in_memory = report.total().pss_shmem;
    fact(
        "array pages, summed PSS",
        format!(
            "{} = {:.3}x the array",
            bytes(in_memory),
            in_memory as f64 / size.max(1) as f64
        ),
    );
    in_memory
}

/// Checks that `in_memory` bytes (from [`array_pages`]) are no more than
/// one copy of a `size`-byte array, with a little slack for the processes'
/// own shared pages.
pub fn one_copy(in_memory: u64, size: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        in_memory <= size + size / 20 + (16 << 20),
        "the array's pages sum to {} over the processes, more than one copy of {}",
        bytes(in_memory),
        bytes(size)
    );
    Ok(())
}

/// Checks, before a demo allocates anything, that `needed` bytes of memory
/// are available; the error names `what` needs them, both sizes, and what
/// to do `instead`.
pub fn ensure_memory(needed: u64, what: &str, instead: &str) -> anyhow::Result<()> {
    let room = forkpool_shm::available_memory().context("reading the memory available")?;
    anyhow::ensure!(
        needed <= room.bytes.as_u64(),
        "{what} needs {} of memory, but only {} is available ({}): {instead}",
        bytes(needed),
        room.bytes,
        room.limit
    );
    Ok(())
}

/// The PSS of the mappings of the file `path`, summed over the processes of
/// `report` (from `/proc/<pid>/smaps`, read with `procfs`): the file's pages
/// in memory, each counted once however many processes map it.
/// (`MemoryReport`'s `pss_file` also counts the program's own code.)
pub fn mapped_file_pss(report: &MemoryReport, path: &std::path::Path) -> anyhow::Result<u64> {
    use procfs::process::{MMapPath, Process};
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("finding the full path of {}", path.display()))?;
    let mut total = 0;
    for process in report.entries() {
        let maps = Process::new(process.pid.as_raw())
            .and_then(|p| p.smaps())
            .with_context(|| format!("reading /proc/{}/smaps", process.pid))?;
        total += maps
            .0
            .iter()
            .filter(|map| matches!(&map.pathname, MMapPath::Path(p) if *p == path))
            .filter_map(|map| map.extension.map.get("Pss"))
            .sum::<u64>();
    }
    Ok(total)
}
