//! Method 1 of the notes: `np.memmap`: the array lives in a file, and every
//! process maps the file itself.
//!
//! The parent creates the file: a `.npy` file (what
//! `np.load(path, mmap_mode='r+')` opens), or with `--raw` the bare
//! elements (what `np.memmap(path, dtype='<f8', shape=...)` reads). Each
//! worker's initializer opens the file by its path and maps it, as each
//! Python process would call `np.memmap`; the workers then fill their
//! blocks of rows with a known formula (element `(r, c)` holds its 1-based
//! position `r * cols + c + 1`) and the parent, through its own mapping,
//! checks every value. The file's pages are the page cache's: the memory
//! table shows them once, summed over all processes, and the kernel writes
//! them back and evicts them as it needs, so the array may be larger than
//! memory (the notes' 25.6 GB fits on disk, not in this machine's 24 GiB).
//! Finally numpy opens the file and checks every value too (the system's
//! python3 if it has numpy, else one the `numpy-env` crate sets up under
//! `target/` on first use; `--no-numpy` skips this).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::{ArrayOptions, Atomic, SharedArray, ShmError};

use crate::common::{self, bytes, fact, phase};

/// Options of the `memmap` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Columns of the array (the notes: 320000, 25.6 GB in all: a file
    /// holds it where memory cannot).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Worker processes (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Write the array to this file and keep it (default: a file in a
    /// temporary directory, removed at the end). An existing file is
    /// refused, never overwritten (remove it first); no other program may
    /// change the file while the demo runs.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A raw file of bare elements (for `np.memmap`) instead of `.npy`
    /// (for `np.load(mmap_mode='r+')`).
    #[arg(long)]
    raw: bool,
    /// Skip the check by numpy (which reads the whole file once more).
    #[arg(long)]
    no_numpy: bool,
}

/// The value element `(row, col)` should hold: its 1-based position in the
/// array, so that an element left at 0 is caught.
fn value(row: usize, col: usize, cols: usize) -> f64 {
    (row * cols + col + 1) as f64
}

// ANCHOR: worker
/// This worker's own mapping of the file, made by the pool's initializer.
static ARRAY: OnceLock<SharedArray<f64>> = OnceLock::new();

/// The initializer: maps the file by its path in this worker, as each
/// Python process calls `np.memmap(path, ...)` or `np.load(path,
/// mmap_mode='r+')` for itself.
fn open_in_worker(path: &Path, shape: [usize; 2], raw: bool) -> Result<(), ShmError> {
    // SAFETY: the parent created the file for this demo; while it runs, only
    // the parent and its workers map it, and only through `SharedArray`s,
    // whose atomic accesses need no lock or claim table (the one thing a
    // second open of the same path does not share); nobody truncates it.
    let array = unsafe {
        if raw {
            ArrayOptions::new().open_file::<f64, Atomic>(path, &shape)?
        } else {
            ArrayOptions::new()
                .open_npy::<f64, Atomic>(path)?
                .expect_shape(&shape)?
        }
    };
    ARRAY
        .set(array)
        .expect("a worker runs its initializer once");
    Ok(())
}

/// Fills rows `[start, end)` through this worker's mapping: maps their
/// pages in one call, then writes each row. Returns this worker's pid and
/// the rows it filled.
fn fill_block((start, end): (usize, usize)) -> Result<(i32, usize), String> {
    let array = ARRAY.get().expect("the initializer mapped the file");
    let cols = array.row_len();
    array.prefault(start..end).map_err(|e| e.to_string())?;
    let mut row = vec![0.0; cols];
    for r in start..end {
        for (col, x) in row.iter_mut().enumerate() {
            *x = value(r, col, cols);
        }
        array.write_row(r, &row);
    }
    Ok((std::process::id() as i32, end - start))
}
// ANCHOR_END: worker

/// A directory removed, with what it holds, when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// Makes a new directory in the system's temporary directory.
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("forkpool-memmap-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let size = common::f64_rows_for(rows, cols, processes)?;
    common::numbered_exactly(rows, cols)?;
    let temp = match args.file {
        Some(_) => None,
        None => Some(TempDir::new()?),
    };
    let path = match (&args.file, &temp) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.0.join(if args.raw { "array.f64" } else { "array.npy" }),
        (None, None) => unreachable!("a temporary directory is made when --file is not given"),
    };
    common::heading(
        "memmap",
        "np.memmap: a file-backed array, mapped by every process itself",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", processes);
    fact(
        "file",
        format!(
            "{} ({}{})",
            path.display(),
            if args.raw { "raw" } else { ".npy" },
            if temp.is_some() {
                ", removed at the end"
            } else {
                ""
            }
        ),
    );

    // ANCHOR: create
    let (array, _) = phase("create the file", None, || {
        // SAFETY: the file is created here (an existing path is an error);
        // while the demo runs only this program and its workers map it.
        unsafe {
            if args.raw {
                ArrayOptions::new().create_file::<f64, Atomic>(&path, &[rows, cols])
            } else {
                ArrayOptions::new().create_npy::<f64, Atomic>(&path, &[rows, cols])
            }
        }
    });
    let array = array.context("creating the array's file")?;
    let (pool, _) = phase("start pool, workers open it", None, || {
        let (path, raw) = (path.clone(), args.raw);
        Pool::builder()
            .processes(processes)
            .try_initializer(move || open_in_worker(&path, [rows, cols], raw))
            .build()
    });
    let pool = pool.context("starting the pool")?;
    // ANCHOR_END: create

    let result = with_pool(args, &pool, &array, &path, size);
    pool.close();
    pool.join()?;
    result?;
    drop(array);
    let numpy = if args.no_numpy {
        "numpy's check skipped (--no-numpy)"
    } else {
        check_with_numpy(&path, rows, cols, args.raw)?
    };
    common::verified(format!(
        "{} values as written, one copy in memory, {numpy}",
        rows * cols
    ));
    Ok(())
}

/// The demo's work once the workers have mapped the file.
fn with_pool(
    args: &Args,
    pool: &Pool,
    array: &SharedArray<f64>,
    path: &Path,
    size: u64,
) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);

    // ANCHOR: map
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
    common::rows_per_pid(filled)?;

    // ANCHOR: verify
    let bar = common::progress(blocks.len() as u64, "verify every value");
    let (checked, _) = phase("verify every value", Some(size), || {
        for &(start, end) in &blocks {
            for r in start..end {
                if let Some((col, x)) = array
                    .iter_rows(r..r + 1)
                    .enumerate()
                    .find(|&(col, x)| x != value(r, col, cols))
                {
                    anyhow::bail!(
                        "element ({r}, {col}) holds {x}, expected {}{}",
                        value(r, col, cols),
                        if x == 0.0 { " (never written)" } else { "" }
                    );
                }
            }
            bar.inc(1);
        }
        Ok(())
    });
    bar.finish_and_clear();
    checked?;

    let report = common::memory_table("memory while the workers map the file", Some(pool), &[])?;
    let in_memory = common::mapped_file_pss(&report, path)?;
    fact(
        "file pages, summed PSS",
        format!(
            "{} = {:.3}x the array",
            bytes(in_memory),
            in_memory as f64 / size as f64
        ),
    );
    // Each page of the file counts once, however many processes map it
    // (the .npy header adds a page).
    ensure!(
        in_memory <= size + size / 20 + (1 << 20),
        "the file's pages sum to {} over the processes, more than one copy of {}",
        bytes(in_memory),
        bytes(size)
    );
    // ANCHOR_END: verify
    phase("flush to disk (msync)", None, || array.flush())
        .0
        .with_context(|| format!("writing {} to disk", path.display()))?;
    Ok(())
}

/// What numpy runs: opens the file as `np.memmap` or `np.load(mmap_mode=)`
/// would, checks its shape and dtype and every value, block by block, and
/// prints its sum. Exits 1 if a check fails.
const NUMPY_CHECK: &str = r#"
import sys
import numpy as np
path, rows, cols, raw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "raw"
if raw:
    how = "np.memmap(path, dtype='<f8', mode='r', shape=(rows, cols))"
    a = np.memmap(path, dtype="<f8", mode="r", shape=(rows, cols))
else:
    how = "np.load(path, mmap_mode='r')"
    a = np.load(path, mmap_mode="r")
if a.shape != (rows, cols) or a.dtype != np.float64:
    print(f"{how} gives shape {a.shape}, dtype {a.dtype}")
    sys.exit(1)
step = max(1, (1 << 20) // cols)
differ = 0
total = 0.0
for s in range(0, rows, step):
    e = min(rows, s + step)
    want = np.arange(s * cols + 1, e * cols + 1, dtype=np.float64).reshape(e - s, cols)
    block = np.asarray(a[s:e])
    differ += int(np.count_nonzero(block != want))
    total += float(block.sum())
print(f"{how}: shape {a.shape}, dtype {a.dtype}, {differ} values differ, sum {total!r}")
sys.exit(1 if differ else 0)
"#;

/// Lets numpy open the file and check it. Fails, saying what to install,
/// if no Python with numpy can be had. Returns what happened, for the
/// verdict.
fn check_with_numpy(
    path: &Path,
    rows: usize,
    cols: usize,
    raw: bool,
) -> anyhow::Result<&'static str> {
    let python = numpy_env::python()
        .map_err(|e| anyhow::anyhow!("{e} (or pass --no-numpy to skip numpy's check)"))?;
    fact("numpy", python.describe());
    let mut python = python.command();
    python.arg("-c").arg(NUMPY_CHECK).arg(path).args([
        rows.to_string(),
        cols.to_string(),
        (if raw { "raw" } else { "npy" }).to_string(),
    ]);
    let (out, _) = phase(
        "numpy reads the file",
        Some(common::array_bytes(rows, cols, 8)?),
        || python.output(),
    );
    let out = out.context("running python3")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => {
            fact("numpy", &said);
            let n = (rows * cols) as f64;
            let want = n * (n + 1.0) / 2.0;
            let sum: f64 = said
                .rsplit("sum ")
                .next()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("numpy printed no sum: {said}"))?;
            ensure!(
                (sum - want).abs() <= want * 1e-9,
                "numpy sums the file to {sum}, expected {want}"
            );
            Ok("numpy agrees")
        }
        _ => anyhow::bail!(
            "numpy's check of {} failed: {said}{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}
