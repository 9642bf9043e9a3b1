//! Method 2 of the notes: pickle/unpickle, what `multiprocessing.Pool` does
//! by default: the array travels by value with every task.
//!
//! Each task carries the whole array: the parent serialises it (serde, in the
//! pool's wire format: the counterpart of pickle) once per task, the bytes cross the task's
//! pipe, and the worker deserialises a copy of its own before it can sum its
//! share of the rows. The demo shows what that costs: the bytes serialised
//! (the array times the tasks), the time to encode and send them, and the
//! memory multiplied. The memory table is taken while every worker holds its
//! copy (each task waits, holding it, until the parent has taken the table,
//! on a flag in shared memory), and the demo checks that each worker holds
//! at least one whole array of private memory. The row sums are checked
//! against a serial computation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use forkpool::{AsyncResult, Pool};
use forkpool_shm::SharedArray;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::{self, bytes, fact, phase};

/// Options of the `copy` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array (the notes: 10000; but the copying way multiplies
    /// the memory, so a much smaller array is what fits).
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Columns of the array (the notes: 320000).
    #[arg(long, default_value_t = 8000)]
    cols: usize,
    /// Worker processes, each sent a copy of the array (the notes: 4).
    #[arg(long, default_value_t = 4)]
    processes: usize,
}

/// How long a worker holds its copy waiting for the parent at most, and
/// the parent waits for the workers at least (more for large arrays).
const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// The value element `(row, col)` holds: its 1-based position.
fn value(row: usize, col: usize, cols: usize) -> f64 {
    (row * cols + col + 1) as f64
}

/// Sums each row of `rows`, `cols` to a row.
fn sum_rows(rows: &[f64], cols: usize) -> Vec<f64> {
    rows.chunks(cols).map(|row| row.iter().sum()).collect()
}

// ANCHOR: payload
/// The array as a task carries it: the parent serialises its one copy
/// (`pickle.dumps`), the worker deserialises a copy of its own
/// (`pickle.loads`).
struct Payload(Arc<Vec<f64>>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<f64>::deserialize(d).map(|v| Payload(Arc::new(v)))
    }
}
// ANCHOR_END: payload

/// Two counters in shared memory: how many workers hold their copy, and
/// whether the parent has taken the memory table (so they may let go).
#[derive(Clone)]
struct Flags {
    held: SharedArray<u32>,
    release: SharedArray<u32>,
}

/// The flags, stored in every worker by the pool's initializer.
static FLAGS: OnceLock<Flags> = OnceLock::new();

// ANCHOR: worker
/// One task: gets its own copy of the whole array, decoded from the task
/// pipe before this runs; says it holds it, sums rows `[start, end)`, and
/// keeps the copy until the parent has measured the memory. Returns this
/// worker's pid, its row sums, and how long the sums took.
fn sum_my_rows((array, cols, start, end): (Payload, usize, usize, usize)) -> (i32, Vec<f64>, f64) {
    let flags = FLAGS.get().expect("the initializer stored the flags");
    flags.held.fetch_add(0, 1, Ordering::AcqRel);
    let t0 = Instant::now();
    let sums = sum_rows(&array.0[start * cols..end * cols], cols);
    let took = t0.elapsed().as_secs_f64();
    hold_until_released(flags);
    drop(array); // only now does this worker give its copy back
    (std::process::id() as i32, sums, took)
}
// ANCHOR_END: worker

/// Waits until the parent sets the release flag, its zygote dies (the
/// parent is gone), or [`HOLD_LIMIT`] passes: never forever.
fn hold_until_released(flags: &Flags) {
    let zygote = nix::unistd::getppid();
    let t0 = Instant::now();
    while flags.release.load(0, Ordering::Acquire) == 0
        && nix::unistd::getppid() == zygote
        && t0.elapsed() < HOLD_LIMIT
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let size = common::f64_rows_for(rows, cols, processes)?;
    common::numbered_exactly(rows, cols)?;
    common::heading(
        "copy",
        "pickle/unpickle: the whole array sent by value with every task",
    );
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", format!("{processes}, one task each"));
    // The array, one encoded task per worker (until the pipe takes it), and
    // in each worker the bytes received and the copy decoded from them.
    let copies = 1 + 3 * processes as u64;
    common::ensure_memory(
        size.saturating_mul(copies),
        &format!("sending {processes} copies of the array"),
        "that is the point of this demo: memory multiplies; use smaller --rows/--cols \
         or fewer --processes",
    )?;

    let flags = Flags {
        held: SharedArray::<_>::full(&[], 0).context("creating the shared counter")?,
        release: SharedArray::<_>::full(&[], 0).context("creating the shared flag")?,
    };
    let (pool, _) = phase("start the pool", None, || {
        let for_workers = flags.clone();
        Pool::builder()
            .processes(processes)
            .initializer(move || {
                let stored = FLAGS.set(for_workers.clone());
                assert!(stored.is_ok(), "a worker runs its initializer once");
            })
            .build()
    });
    let pool = pool.context("starting the pool")?;

    // Made after the pool forked: the workers get the array only as the
    // tasks send it.
    let bar = common::progress(rows as u64, "make the array");
    let (data, _) = phase("make the array", Some(size), || {
        let mut data = Vec::with_capacity(rows * cols);
        for row in 0..rows {
            data.extend((0..cols).map(|col| value(row, col, cols)));
            bar.inc(1);
        }
        data
    });
    bar.finish_and_clear();
    let array = Arc::new(data);

    let result = with_pool(args, &pool, &array, &flags, size);
    // Whatever happened, let the workers go, then end the pool.
    flags.release.set(0, 1);
    pool.close();
    pool.join()?;
    result
}

/// The demo's work once the pool has started.
fn with_pool(
    args: &Args,
    pool: &Pool,
    array: &Arc<Vec<f64>>,
    flags: &Flags,
    size: u64,
) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let blocks = forkpool_shm::split_rows(rows, processes);

    // ANCHOR: send
    let bar = common::progress(processes as u64, "encode a copy per task");
    let (tasks, _) = phase(
        "encode a copy per task",
        Some(size * processes as u64),
        || {
            let mut tasks: Vec<AsyncResult<(i32, Vec<f64>, f64)>> = Vec::with_capacity(processes);
            for r in &blocks {
                let payload = Payload(Arc::clone(array));
                tasks.push(pool.apply_async(sum_my_rows, (payload, cols, r.start, r.end)));
                bar.inc(1);
            }
            tasks
        },
    );
    bar.finish_and_clear();
    let serialised = processes as u64 * wire_len(rows * cols);
    fact(
        "bytes serialised",
        format!(
            "{processes} x {} = {} (serialised: a length and 8 bytes a double)",
            bytes(wire_len(rows * cols)),
            bytes(serialised)
        ),
    );
    let bar = common::progress(processes as u64, "send, decode");
    let (all_held, _) = phase("send and decode", Some(serialised), || {
        wait_until_held(flags, &tasks, processes, size, &bar)
    });
    bar.finish_and_clear();
    if let Err(waiting) = all_held {
        // A task that ended early failed: its own error says why.
        for task in tasks {
            if task.ready() {
                task.get()
                    .context("a worker failed before every worker held its copy")?;
            }
        }
        return Err(waiting);
    }
    // ANCHOR_END: send

    // ANCHOR: verify
    let report = common::memory_table("memory while every worker holds its copy", Some(pool), &[])?;
    flags.release.set(0, 1);
    let mut sums = Vec::with_capacity(rows);
    let mut slowest: f64 = 0.0;
    for task in tasks {
        let (_, block, took) = task.get().context("a worker failed")?;
        sums.extend(block);
        slowest = slowest.max(took);
    }
    fact(
        "workers' row sums (slowest)",
        format!("{slowest:.3} s, once they had their copy"),
    );
    let (serial, _) = phase("the same sums, serial", Some(size), || {
        sum_rows(array, cols)
    });
    ensure!(
        sums == serial,
        "the workers' row sums differ from the serial ones"
    );
    let total = report.total();
    fact(
        "copies in memory",
        format!(
            "summed PSS {} = {:.2}x the array",
            bytes(total.pss),
            total.pss as f64 / size as f64
        ),
    );
    let workers: Vec<_> = report
        .entries()
        .iter()
        .filter(|e| e.role.starts_with("worker"))
        .collect();
    for w in &workers {
        ensure!(
            w.private() >= size - size / 10,
            "{} (pid {}) holds {} of private memory while holding its copy of an array of {}",
            w.role,
            w.pid,
            bytes(w.private()),
            bytes(size)
        );
    }
    let least = workers.iter().map(|w| w.private()).min().unwrap_or(0);
    fact(
        "each worker holds privately",
        format!(
            "at least {}: its own copy, decoded from the bytes it received",
            bytes(least)
        ),
    );
    common::verified(format!(
        "{rows} row sums match the serial ones, {} copies serialised, every worker holds \
         at least {:.2}x the array privately",
        workers.len(),
        least as f64 / size as f64
    ));
    // ANCHOR_END: verify
    Ok(())
}

/// Waits until `processes` workers hold their copy. Fails if a task ends
/// first (it failed) or the workers take too long.
fn wait_until_held(
    flags: &Flags,
    tasks: &[AsyncResult<(i32, Vec<f64>, f64)>],
    processes: usize,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    // Generous: a minute, and a second more per 64 MiB sent.
    let limit = HOLD_LIMIT / 2 + Duration::from_secs(size * processes as u64 / (64 << 20));
    let t0 = Instant::now();
    loop {
        let held = flags.held.load(0, Ordering::Acquire) as usize;
        bar.set_position(held as u64);
        if held == processes {
            return Ok(());
        }
        ensure!(
            !tasks.iter().any(AsyncResult::ready),
            "a task ended before every worker held its copy: a worker failed"
        );
        ensure!(
            t0.elapsed() < limit,
            "only {held} of {processes} workers got their copy within {} s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The size of `n` doubles serialised by the pool: the length (8 bytes),
/// then 8 bytes each.
fn wire_len(n: usize) -> u64 {
    8 + 8 * n as u64
}
