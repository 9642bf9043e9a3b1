//! Method 9 of the notes: the same program runs on a Mac and dies with
//! `MemoryError` on an Ubuntu cloud VM with as much RAM: the VM has no
//! swap, so memory past what it has cannot be paged out to disk.
//!
//! The demo asks for an anonymous shared array larger than the memory
//! available (by default 1.5 times `MemAvailable`, 10 000 rows as in the
//! notes), and shows what `forkpool-shm` answers: an
//! [`ShmError::OutOfMemory`] naming the size asked, the memory available
//! and the file-backed alternative, returned in well under a millisecond
//! and before anything is allocated (rather than a worker killed by the
//! OOM killer, or by `SIGBUS`, part way through). The memory table after it
//! shows nothing was taken.
//!
//! With `--file PATH`, the same array is then made in that file, and the
//! workers fill their rows of it: the kernel pages it to and from disk as
//! memory allows, which is what a Mac does with its swap. The parent checks
//! every element, and the memory table shows the array's pages as file
//! pages (page cache), not shared memory.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, ensure};
use forkpool::Pool;
use forkpool_shm::{ArrayOptions, MemInfo, MemoryUsage, Partitioned, SharedArray, ShmError};

use crate::common::{self, bytes, fact, phase};

/// Options of the `memory-limit` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (default: the notes' 10000).
    #[arg(long)]
    rows: Option<usize>,
    /// Columns of the array (default: enough for --factor times the memory
    /// available).
    #[arg(long)]
    cols: Option<usize>,
    /// The default array's size, as a multiple of the memory available.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Worker processes filling the file-backed array.
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Then make the array in this file (created, never overwritten: an
    /// existing file is refused; kept afterwards)
    /// and fill it: the way that works. The disk needs room for it.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// The value element `(row, col)` gets: its 1-based position, so that an
/// element left at 0 is caught.
fn value(row: usize, col: usize, cols: usize) -> f64 {
    (row * cols + col + 1) as f64
}

// ANCHOR: worker
/// The file-backed array, handed to each worker by the initializer.
static ARRAY: OnceLock<SharedArray<f64, Partitioned>> = OnceLock::new();

/// Fills rows `[start, end)` of the file-backed array.
fn fill_block((start, end): (usize, usize)) -> Result<(i32, usize), String> {
    let array = ARRAY.get().expect("the initializer sets the array");
    let cols = array.row_len();
    array
        .with_rows_mut(start..end, |rows| {
            for (i, row) in rows.chunks_mut(cols).enumerate() {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = value(start + i, c, cols);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((std::process::id() as i32, end - start))
}
// ANCHOR_END: worker

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.factor.is_finite() && args.factor > 0.0,
        "--factor must be a positive number (got {})",
        args.factor
    );
    ensure!(args.processes > 0, "--processes must be at least 1 (got 0)");
    common::heading(
        "memory-limit",
        "MemoryError without swap: a clear error before the allocation, and the file-backed way",
    );

    // ANCHOR: meminfo
    let info = MemInfo::read()?;
    let room = forkpool_shm::available_memory()?;
    fact("MemTotal", bytes(info.mem_total));
    fact("MemAvailable", bytes(info.mem_available));
    fact(
        "SwapTotal",
        format!(
            "{} (free {})",
            bytes(info.swap_total),
            bytes(info.swap_free)
        ),
    );
    fact(
        "room for shared memory",
        format!("{} ({})", room.bytes, room.limit),
    );
    // ANCHOR_END: meminfo

    let rows = args.rows.unwrap_or(10_000);
    ensure!(rows > 0, "--rows must be at least 1");
    let cols = match args.cols {
        Some(cols) => cols,
        None => {
            let target = room.bytes.as_u64() as f64 * args.factor;
            ((target / (rows as f64 * 8.0)).ceil() as usize).max(1)
        }
    };
    ensure!(cols > 0, "--cols must be at least 1");
    ensure!(
        rows >= args.processes || args.file.is_none(),
        "need at least one row per process (--rows {rows}, --processes {})",
        args.processes
    );
    let size = common::array_bytes(rows, cols, 8)?;
    let share = size as f64 / room.bytes.as_u64().max(1) as f64;
    fact(
        "array asked for",
        if share >= 0.01 {
            format!(
                "{rows} x {cols} f64 = {} ({share:.2}x the room)",
                bytes(size)
            )
        } else {
            format!(
                "{rows} x {cols} f64 = {} (under 1% of the room)",
                bytes(size)
            )
        },
    );
    let fits = size <= room.bytes.as_u64();
    ensure!(
        !fits || args.file.is_some(),
        "{rows} x {cols} doubles ({}) fit in the {} available, so there is no error to show: \
         leave out --cols (the default asks for {} times the memory available), or add \
         --file PATH to fill a file-backed array of this size",
        bytes(size),
        room.bytes,
        args.factor
    );
    // Just above the room, the memory available might grow enough by the
    // time the array is asked for that it is accepted, and allocated.
    ensure!(
        fits || share >= 1.1,
        "{} is only {share:.2}x the {} available: too close to ask for safely (it might be \
         allocated); ask for at least 1.1x (e.g. --factor 1.5)",
        bytes(size),
        room.bytes
    );
    let refused = if fits {
        fact(
            "anonymous array",
            "fits in the room: it would be accepted (not made here)",
        );
        None
    } else {
        let ms = refuse(rows, cols, size, info.swap_total)?;
        Some(ms)
    };

    let filled = match &args.file {
        Some(path) => Some(fill_file(path, rows, cols, size, args.processes)?),
        None => None,
    };

    // ANCHOR: verdict
    let mut verdict = Vec::new();
    if let Some(ms) = refused {
        verdict.push(format!(
            "{} asked with {} available: OutOfMemory in {ms:.3} ms, before any allocation, \
             naming both sizes and the file-backed alternative",
            bytes(size),
            room.bytes
        ));
    }
    if let Some(workers) = filled {
        verdict.push(format!(
            "the file-backed array of {} filled by {workers} workers and every element checked; \
             its pages are file pages",
            bytes(size)
        ));
    }
    common::verified(verdict.join("; "));
    // ANCHOR_END: verdict
    Ok(())
}

/// Asks for the anonymous array, which must be refused at once with
/// `OutOfMemory`, and checks nothing was allocated; returns how many
/// milliseconds the refusal took.
fn refuse(rows: usize, cols: usize, size: u64, swap_total: u64) -> anyhow::Result<f64> {
    let rss_before = MemoryUsage::current()?.rss;
    let shmem_before = MemInfo::read()?.shmem;
    // ANCHOR: refuse
    let t0 = Instant::now();
    let result = SharedArray::<f64>::new(&[rows, cols]);
    let took = t0.elapsed();
    let err = match result {
        Err(err) => err,
        Ok(_) => anyhow::bail!(
            "an anonymous array of {} was accepted though it is more than the memory available",
            bytes(size)
        ),
    };
    // ANCHOR_END: refuse
    let ms = took.as_secs_f64() * 1e3;
    fact(
        "anonymous array",
        format!("refused in {ms:.3} ms, before any allocation:"),
    );
    for line in wrap(&err.to_string(), 72) {
        println!("      | {line}");
    }
    if swap_total == 0 {
        fact(
            "why Linux says no",
            "no swap: anonymous memory must stay in RAM, and past MemAvailable",
        );
        fact(
            "",
            "there is nowhere to put it (the notes' cloud VM: MemoryError)",
        );
    } else {
        fact(
            "why Linux says no",
            "anonymous memory lives in RAM and swap, and this is more than",
        );
        fact("", "both have free");
    }
    fact(
        "where a Mac pages",
        "macOS grows swap files on its disk as needed, so it runs (slowly)",
    );
    let rss_after = MemoryUsage::current()?.rss;
    let shmem_after = MemInfo::read()?.shmem;
    common::memory_table("memory after the refused request", None, &[])?;

    // ANCHOR: check_refusal
    let text = err.to_string();
    match &err {
        // The array and its header page.
        ShmError::OutOfMemory { requested, .. } => ensure!(
            (size..=size + (1 << 20)).contains(&requested.as_u64()),
            "the error names {} bytes asked, not the {size} asked for",
            requested.as_u64()
        ),
        other => anyhow::bail!("expected OutOfMemory, got: {other}"),
    }
    ensure!(
        text.contains("is available") && text.contains("create_file"),
        "the error does not name the memory available and the file-backed alternative: {text}"
    );
    // Nothing allocated: this process did not grow, nor did the machine's
    // shared memory (other programs may have moved it a little).
    let grew = rss_after.saturating_sub(rss_before);
    ensure!(
        grew < 64 << 20,
        "this process grew by {} asking for the array: something was allocated",
        bytes(grew)
    );
    ensure!(
        shmem_after < shmem_before + size / 10 + (256 << 20),
        "the machine's shared memory grew from {} to {} asking for the array",
        bytes(shmem_before),
        bytes(shmem_after)
    );
    // ANCHOR_END: check_refusal
    Ok(ms)
}

/// Makes the array in `path`, lets `processes` workers fill it, checks
/// every element and that its pages are file pages; returns how many
/// workers did work.
fn fill_file(
    path: &std::path::Path,
    rows: usize,
    cols: usize,
    size: u64,
    processes: usize,
) -> anyhow::Result<usize> {
    // ANCHOR: file
    let (array, _) = phase("create the file (reserve)", Some(size), || {
        // SAFETY: the file is created here (nothing may exist there), and while the demo
        // runs only this program and the workers it forks map or change it.
        unsafe { ArrayOptions::new().create_file::<f64, Partitioned>(path, &[rows, cols]) }
    });
    let array = array.with_context(|| format!("creating the array in {}", path.display()))?;
    let for_workers = array.clone();
    let pool = Pool::builder()
        .processes(processes)
        .initializer(move || {
            let _ = ARRAY.set(for_workers.clone());
        })
        .build()
        .context("starting the pool")?;
    // Blocks of at most 32 MiB, so that a file larger than memory is
    // written back while the workers go on.
    let per_block = ((32usize << 20) / (cols * 8)).clamp(1, rows.div_ceil(processes));
    let blocks: Vec<(usize, usize)> = (0..rows)
        .step_by(per_block)
        .map(|s| (s, (s + per_block).min(rows)))
        .collect();
    let bar = common::progress(blocks.len() as u64, "workers fill the file");
    let (outcomes, _) = phase("workers fill the file", Some(size), || {
        let it = pool
            .progress_bar(bar)
            .imap_unordered(fill_block, blocks.clone(), 1);
        it.collect::<Vec<_>>()
    });
    // ANCHOR_END: file
    let mut pids = BTreeSet::new();
    for outcome in outcomes {
        let (pid, _) = outcome
            .context("a worker failed")?
            .map_err(|e| anyhow::anyhow!("a worker could not fill its rows: {e}"))?;
        pids.insert(pid);
    }

    let report = common::memory_table("memory while the workers hold the array", Some(&pool), &[])?;
    let in_file = common::mapped_file_pss(&report, path)?;
    let in_shmem = report.total().pss_shmem;
    fact(
        "array pages, summed PSS",
        format!(
            "{} as file pages (page cache), {} as shared memory",
            bytes(in_file),
            bytes(in_shmem)
        ),
    );
    pool.close();
    pool.join()?;

    // ANCHOR: verify
    let bar = common::progress(rows as u64, "check every element");
    let (wrong, _) = phase("check every element", Some(size), || {
        let mut wrong = None;
        for (s, e) in &blocks {
            array.with_rows(*s..*e, |block| {
                for (i, row) in block.chunks(cols).enumerate() {
                    if let Some(c) = (0..cols).find(|&c| row[c] != value(s + i, c, cols)) {
                        wrong = wrong.or(Some((s + i, c, row[c])));
                    }
                }
            })?;
            bar.inc((e - s) as u64);
        }
        Ok::<_, ShmError>(wrong)
    });
    bar.finish_and_clear();
    if let Some((r, c, v)) = wrong? {
        anyhow::bail!(
            "element ({r}, {c}) holds {v}, not {}: a row was not filled",
            value(r, c, cols)
        );
    }
    phase("flush to disk (msync)", Some(size), || array.flush())
        .0
        .with_context(|| format!("writing {} to disk", path.display()))?;
    // The data is in the file itself: read the last element back with
    // read(2), past the mapping.
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    ensure!(
        len == size,
        "{} is {len} bytes, not the array's {size}",
        path.display()
    );
    let mut last = [0u8; 8];
    file.read_exact_at(&mut last, size - 8)?;
    ensure!(
        f64::from_le_bytes(last) == value(rows - 1, cols - 1, cols),
        "the file's last element is {}, not {}",
        f64::from_le_bytes(last),
        value(rows - 1, cols - 1, cols)
    );
    // The array's pages were file pages, not shared memory (in which the
    // whole array would not have fitted).
    ensure!(
        in_shmem < size / 20 + (16 << 20),
        "{} of shared memory in use by the processes: the array is not in the file",
        bytes(in_shmem)
    );
    ensure!(
        in_file > 0,
        "no page of {} is mapped by the processes",
        path.display()
    );
    // ANCHOR_END: verify
    fact(
        "the file stays",
        format!("{} (delete it when done)", path.display()),
    );
    Ok(pids.len())
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
