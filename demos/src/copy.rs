//! Method 2 of the notes: pickle/unpickle, what `multiprocessing.Pool` does
//! by default: the array travels by value with every task. Two ways, run
//! one after the other, out of band first (`--way` picks one):
//!
//! - **serialised** (`--way serialised`): each task carries the whole
//!   array: the parent serialises it (serde, in the pool's wire format: the
//!   counterpart of pickle) once per task, the bytes cross the task's pipe,
//!   and the worker deserialises a copy of its own before it can sum its
//!   share of the rows. The demo checks that each worker holds at least one
//!   whole array of private memory.
//! - **out of band** (`--way buffer`): the array is a `forkpool::Buffer`, a
//!   sealed memory file (the counterpart of pickle protocol 5's out-of-band
//!   buffers). A task carries its descriptor; the worker maps the same
//!   pages, read-only. Still by value: nobody can change the pages once
//!   sealed. The demo checks that no worker holds a copy (its anonymous
//!   memory stays far below the array) and that the workers' mapped pages
//!   of the buffer add up to the array once.
//!
//! For each way the demo shows the bytes that cross the pipes, the time to
//! encode and send them, and a memory table taken while every worker holds
//! its argument (each task waits, holding it, until the parent has taken
//! the table, on a flag in shared memory), with where each worker's memory
//! is: anonymous (its own copies) or shared memory (the buffer's pages).
//! The row sums are checked against a serial computation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use forkpool::{AsyncResult, Buffer, BufferMut, Pool};
use forkpool_shm::{MemoryReport, SharedArray};
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
    /// Which way to send the array: serialised into every task, as a
    /// sealed buffer passed out of band, or both, one after the other.
    #[arg(long, value_enum, default_value_t = Way::Both)]
    way: Way,
}

/// How the array travels to the workers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Serialised into every task and decoded into a copy by each worker.
    Serialised,
    /// A `forkpool::Buffer`: a sealed memory file whose descriptor travels
    /// beside the task, mapped by each worker.
    Buffer,
    /// Both, the buffer first.
    Both,
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

impl AsRef<[f64]> for Payload {
    fn as_ref(&self) -> &[f64] {
        &self.0
    }
}

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
/// One task: gets the whole array as `A`, a `Payload` (its own copy,
/// decoded from the task pipe before this runs) or a `Buffer<f64>` (the
/// sender's sealed pages, mapped); sums rows `[start, end)`, says it holds
/// the array, and keeps it until the parent has measured the memory. Returns this worker's pid, its row sums, and how long the sums
/// took.
fn sum_my_rows<A: AsRef<[f64]>>(
    (array, cols, start, end): (A, usize, usize, usize),
) -> (i32, Vec<f64>, f64) {
    let flags = FLAGS.get().expect("the initializer stored the flags");
    let t0 = Instant::now();
    let sums = sum_rows(&array.as_ref()[start * cols..end * cols], cols);
    let took = t0.elapsed().as_secs_f64();
    // Only now: a buffer's pages are mapped into this worker as it reads.
    flags.held.fetch_add(0, 1, Ordering::AcqRel);
    hold_until_released(flags);
    drop(array); // only now does this worker give its array back
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
    common::f64_rows_for(args.rows, args.cols, args.processes)?;
    common::numbered_exactly(args.rows, args.cols)?;
    // The buffer first: a pool built after the serialised way would
    // inherit, in its zygote and workers, memory the parent kept from it
    // (the pool keeps its last big frame buffer for the next big value),
    // which would muddy the second table.
    if args.way != Way::Serialised {
        run_way(args, Way::Buffer)?;
    }
    if args.way != Way::Buffer {
        run_way(args, Way::Serialised)?;
    }
    Ok(())
}

/// Runs one way: a pool, the array, one task per worker.
fn run_way(args: &Args, way: Way) -> anyhow::Result<()> {
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let size = common::f64_rows_for(rows, cols, processes)?;
    match way {
        Way::Buffer => common::heading(
            "copy --way buffer",
            "pickle protocol 5: the array by value, out of band, in a sealed buffer",
        ),
        _ => common::heading(
            "copy",
            "pickle/unpickle: the whole array sent by value with every task",
        ),
    }
    fact("array", format!("{rows} x {cols} f64 = {}", bytes(size)));
    fact("processes", format!("{processes}, one task each"));
    // Serialised: the array, one encoded task per worker (until the pipe
    // takes it), and in each worker the bytes received and the copy
    // decoded from them. Out of band: the one buffer.
    let copies = match way {
        Way::Buffer => 1,
        _ => 1 + 3 * processes as u64,
    };
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
    let result = match way {
        Way::Buffer => make_buffer(rows, cols, size).and_then(|array| {
            let sent = move |_: usize| (array.clone(), wire_len(0, true));
            with_pool(args, &pool, &flags, size, sent, |a| sum_rows(a, cols))
        }),
        _ => {
            let array = Arc::new(make_vec(rows, cols, size));
            let n = rows * cols;
            let sent = |_: usize| (Payload(Arc::clone(&array)), wire_len(n, false));
            with_pool(args, &pool, &flags, size, sent, |_| sum_rows(&array, cols))
        }
    };
    // Whatever happened, let the workers go, then end the pool.
    flags.release.set(0, 1);
    pool.close();
    pool.join()?;
    result
}

/// The array in a `Vec`, row by row.
fn make_vec(rows: usize, cols: usize, size: u64) -> Vec<f64> {
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
    data
}

// ANCHOR: make_buffer
/// The array written in place into a new memory file, then sealed: no
/// copy, and from then on nobody can change it.
fn make_buffer(rows: usize, cols: usize, size: u64) -> anyhow::Result<Buffer<f64>> {
    let bar = common::progress(rows as u64, "make the array in a buffer");
    let (made, _) = phase("make the array in a buffer", Some(size), || {
        let mut data = BufferMut::<f64>::zeroed(rows * cols)?;
        for (row, values) in data.chunks_mut(cols).enumerate() {
            for (col, x) in values.iter_mut().enumerate() {
                *x = value(row, col, cols);
            }
            bar.inc(1);
        }
        data.freeze()
    });
    bar.finish_and_clear();
    made.context("making the buffer")
}
// ANCHOR_END: make_buffer

/// The demo's work once the pool has started: one task per worker, each
/// with what `sent(i)` makes of the array (the argument, and its size
/// on the pipe); `serial(argument)` gives the sums to check them against.
fn with_pool<A>(
    args: &Args,
    pool: &Pool,
    flags: &Flags,
    size: u64,
    sent: impl Fn(usize) -> (A, u64),
    serial: impl FnOnce(&[f64]) -> Vec<f64>,
) -> anyhow::Result<()>
where
    A: AsRef<[f64]> + Serialize + serde::de::DeserializeOwned,
{
    let (rows, cols, processes) = (args.rows, args.cols, args.processes);
    let blocks = forkpool_shm::split_rows(rows, processes);
    let (kept, wire) = sent(0);
    let buffer = std::any::type_name::<A>().contains("Buffer");

    // ANCHOR: send
    let what = if buffer {
        "send a buffer per task"
    } else {
        "encode a copy per task"
    };
    let bar = common::progress(processes as u64, what);
    // A buffer's bytes do not move: no rate to show.
    let moved = (!buffer).then_some(size * processes as u64);
    let (tasks, _) = phase(what, moved, || {
        let mut tasks: Vec<AsyncResult<(i32, Vec<f64>, f64)>> = Vec::with_capacity(processes);
        for (i, r) in blocks.iter().enumerate() {
            let (array, _) = sent(i);
            tasks.push(pool.apply_async(sum_my_rows::<A>, (array, cols, r.start, r.end)));
            bar.inc(1);
        }
        tasks
    });
    bar.finish_and_clear();
    let serialised = processes as u64 * wire;
    fact(
        "bytes serialised",
        format!(
            "{processes} x {} = {} ({})",
            bytes(wire),
            bytes(serialised),
            if buffer {
                "the buffer's length; its descriptor travels beside the task"
            } else {
                "serialised: a length and 8 bytes a double"
            }
        ),
    );
    let bar = common::progress(processes as u64, "send, decode");
    let (all_held, _) = phase("send and decode", (!buffer).then_some(serialised), || {
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
    let title = if buffer {
        "memory while every worker holds the buffer"
    } else {
        "memory while every worker holds its copy"
    };
    let report = common::memory_table(title, Some(pool), &[])?;
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
        format!("{slowest:.3} s, once they had their array"),
    );
    let (serial, _) = phase("the same sums, serial", Some(size), || {
        serial(kept.as_ref())
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
    where_workers_hold_it(&report, rows, size, buffer)?;
    // ANCHOR_END: verify
    Ok(())
}

// ANCHOR: where
/// Where the workers' memory is, by kind: anonymous (what a worker
/// allocated: a decoded copy) or shared memory (pages of a memory file it
/// maps: the buffer). Checks each way's claim and says it.
fn where_workers_hold_it(
    report: &MemoryReport,
    rows: usize,
    size: u64,
    buffer: bool,
) -> anyhow::Result<()> {
    let workers: Vec<_> = report
        .entries()
        .iter()
        .filter(|e| e.role.starts_with("worker"))
        .collect();
    let anon: u64 = workers.iter().map(|w| w.pss_anon).sum();
    let shmem: u64 = workers.iter().map(|w| w.pss_shmem).sum();
    fact(
        "workers' anonymous memory",
        format!(
            "{} = {:.2}x the array",
            bytes(anon),
            anon as f64 / size as f64
        ),
    );
    fact(
        "workers' shared memory",
        format!(
            "{} = {:.2}x the array",
            bytes(shmem),
            shmem as f64 / size as f64
        ),
    );
    let n = workers.len();
    if buffer {
        for w in &workers {
            ensure!(
                w.pss_anon < size / 2,
                "{} (pid {}) holds {} of anonymous memory: a copy of an array of {}?",
                w.role,
                w.pid,
                bytes(w.pss_anon),
                bytes(size)
            );
        }
        ensure!(
            shmem >= size - size / 10 && shmem <= size + size / 10,
            "the workers map {} of shared memory for a buffer of {}",
            bytes(shmem),
            bytes(size)
        );
        common::verified(format!(
            "{} row sums match the serial ones, {n} tasks sent one buffer by value, no worker \
             holds a copy, the workers' mapped pages add up to {:.2}x the array",
            rows,
            shmem as f64 / size as f64
        ));
    } else {
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
            "{} row sums match the serial ones, {n} copies serialised, every worker holds \
             at least {:.2}x the array privately",
            rows,
            least as f64 / size as f64
        ));
    }
    Ok(())
}
// ANCHOR_END: where

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

/// The size of the array on the task pipe: `n` doubles serialised by the
/// pool (a length, then 8 bytes each), or a buffer (a tag byte and its
/// length; the descriptor travels beside).
fn wire_len(n: usize, buffer: bool) -> u64 {
    if buffer { 9 } else { 8 + 8 * n as u64 }
}
