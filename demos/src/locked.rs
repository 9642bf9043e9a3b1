//! Method 8 of the notes: `multiprocessing.Array(lock=True)`: a lock around
//! the shared array, needed when writers overlap.
//!
//! Workers add 1 to every counter of a small shared array, round after
//! round, all at once:
//!
//! 1. **without a lock**, reading a counter and writing it back plus one
//!    (`get` then `set`, what `arr[i] += 1` does on a Python
//!    `Array(lock=False)`): two processes read the same value, both write
//!    value + 1, and one update is lost. The demo counts the lost updates
//!    (each worker is pinned to a core of its own, so that they do run at
//!    the same moment even on a busy machine);
//! 2. **with an atomic add** (`fetch_add`), no lock: exact, for one number
//!    at a time;
//! 3. **with the lock** (a [`Locked`] array, and a 0-d one counting the
//!    rounds): exact, for any update;
//! 4. **a worker killed while holding the lock** (`SIGKILL`, as the OOM
//!    killer does): its task fails with `WorkerDied` naming the signal, a
//!    replacement worker appears, the next `with_lock` takes the lock and
//!    reports that its previous holder died (`OwnerDied`, with the data
//!    intact), and the work goes on. Python's lock would stay held by the
//!    dead process, and every later `with arr.get_lock():` would wait
//!    forever.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use forkpool::{Error, Pid, Pool};
use forkpool_shm::{LockError, Locked, Rows, SharedArray};
use serde::{Deserialize, Serialize};

use crate::common::{self, fact};

/// Options of the `locked` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array of counters.
    #[arg(long, default_value_t = 4)]
    rows: usize,
    /// Columns of the array of counters.
    #[arg(long, default_value_t = 8)]
    cols: usize,
    /// Worker processes, all adding to the same counters at once.
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Rounds per worker: each round adds 1 to every counter.
    #[arg(long, default_value_t = 100_000)]
    rounds: u64,
}

/// The counters of each phase, shared by the parent and the workers.
#[derive(Clone)]
struct Counters {
    /// Phase 1: read, add one, write back, without a lock.
    racy: SharedArray<u64>,
    /// Phase 2: atomic adds.
    atomic: SharedArray<u64>,
    /// Phases 3 and 4: behind the lock.
    locked: SharedArray<u64, Locked>,
    /// Phase 3: rounds done, behind a lock of its own.
    rounds: SharedArray<u64, Locked>,
    /// One start line per phase, so that the workers run at the same time.
    start: SharedArray<u32>,
}

/// How many times the unlocked phase is tried until an update is lost.
const ATTEMPTS: usize = 5;

/// Set by the pool's initializer in every worker (replacements too).
static COUNTERS: OnceLock<Counters> = OnceLock::new();

fn counters() -> &'static Counters {
    COUNTERS.get().expect("the initializer sets the counters")
}

/// A task: `rounds` rounds, started when `parties` workers have reached
/// start line `line`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Job {
    rounds: u64,
    parties: u32,
    line: usize,
}

/// The CPUs this worker may run on, as it started.
static CPUS: OnceLock<Vec<usize>> = OnceLock::new();

/// Pins this process to the `index`-th CPU it may run on (wrapping around),
/// so that workers started together run at the same moment on different
/// cores, rather than take turns on one: woken by the parent's writes,
/// they tend to wake on the same core, and on a busy machine stay there.
/// Best effort: does nothing if there is one CPU or a call fails.
fn pin_to_own_core(index: usize) {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let cpus = CPUS.get_or_init(|| match sched_getaffinity(Pid::from_raw(0)) {
        Ok(allowed) => (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    });
    if cpus.len() < 2 {
        return;
    }
    let mut one = CpuSet::new();
    if one.set(cpus[index % cpus.len()]).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &one);
    }
}

/// Waits until `parties` workers have reached start line `line`, or a
/// second has passed (a worker given two tasks must not wait for itself),
/// each pinned to a core of its own.
fn start_together(line: usize, parties: u32) {
    let start = &counters().start;
    let arrived = start.fetch_add(line, 1, Ordering::AcqRel);
    pin_to_own_core(arrived as usize);
    let t0 = Instant::now();
    while start.load(line, Ordering::Acquire) < parties && t0.elapsed() < Duration::from_secs(1) {
        // Spin rather than yield: a worker yielding its core lets the next
        // one run its whole loop there before it wakes up again.
        std::hint::spin_loop();
    }
}

// ANCHOR: racy
/// Phase 1: `counter += 1` as a read and a write, without a lock.
fn add_without_lock(job: Job) -> Duration {
    let racy = &counters().racy;
    start_together(job.line, job.parties);
    let t0 = Instant::now();
    for _ in 0..job.rounds {
        for i in 0..racy.len() {
            let v = racy.get(i); // another process may write here...
            racy.set(i, v + 1); // ...and this overwrites its update
        }
    }
    t0.elapsed()
}
// ANCHOR_END: racy

// ANCHOR: atomic
/// Phase 2: one atomic read-modify-write per counter, no lock.
fn add_atomically(job: Job) -> Duration {
    let atomic = &counters().atomic;
    start_together(job.line, job.parties);
    let t0 = Instant::now();
    for _ in 0..job.rounds {
        for i in 0..atomic.len() {
            atomic.fetch_add(i, 1, Ordering::Relaxed);
        }
    }
    t0.elapsed()
}
// ANCHOR_END: atomic

// ANCHOR: locked
/// Phases 3 and 4: every round under the lock, as `with arr.get_lock():`.
fn add_with_lock(job: Job) -> Result<Duration, String> {
    let Counters { locked, rounds, .. } = counters();
    start_together(job.line, job.parties);
    let t0 = Instant::now();
    for _ in 0..job.rounds {
        locked
            .with_lock(|counts| {
                for x in counts.iter_mut() {
                    *x += 1; // an ordinary `&mut [u64]`: nobody else holds the lock
                }
            })
            .map_err(|e| e.to_string())?;
        rounds.with_lock(|r| r[0] += 1).map_err(|e| e.to_string())?;
    }
    Ok(t0.elapsed())
}
// ANCHOR_END: locked

// ANCHOR: die
/// Phase 4: takes the lock, completes one round, and is killed (SIGKILL)
/// while still holding it.
fn die_holding_the_lock((): ()) -> u64 {
    let _ = counters().locked.with_lock(|counts| {
        for x in counts.iter_mut() {
            *x += 1;
        }
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    });
    unreachable!("SIGKILL cannot be caught");
}

/// What the next locker found (pids raw: it crosses the pool as postcard).
#[derive(Debug, Serialize, Deserialize)]
struct Recovery {
    /// Pid of the worker that took the lock.
    pid: i32,
    /// `Some(dead holder's pid)` if `with_lock` reported that it died.
    owner_died: Option<Option<i32>>,
    /// The smallest and largest counter it found.
    min: u64,
    max: u64,
}

/// Phase 4, in a worker: takes the lock after its holder died, checks the
/// data and clears the poison.
fn lock_after_the_death((): ()) -> Result<Recovery, String> {
    let locked = &counters().locked;
    let check = |counts: &mut Rows<'_, u64>| {
        let (min, max) = (
            *counts.iter().min().unwrap_or(&0),
            *counts.iter().max().unwrap_or(&0),
        );
        // The dead holder finished its round before it died: every counter
        // moved together, so the data is consistent; say so.
        if min == max {
            locked.clear_poison();
        }
        (min, max)
    };
    let ((min, max), owner_died) = match locked.with_lock(check) {
        Ok(found) => (found, None),
        Err(LockError::OwnerDied(died)) => {
            let pid = died.pid().map(Pid::as_raw);
            (died.into_inner(), Some(pid))
        }
        Err(LockError::Failed(e)) => return Err(e.to_string()),
    };
    Ok(Recovery {
        pid: std::process::id() as i32,
        owner_died,
        min,
        max,
    })
}
// ANCHOR_END: die

/// Runs one phase: a task per worker, all starting at once; returns the
/// workers' results and the wall time.
fn run_phase<R>(
    pool: &Pool,
    f: fn(Job) -> R,
    job: Job,
    processes: usize,
) -> anyhow::Result<(Vec<R>, Duration)>
where
    R: Serialize + for<'de> Deserialize<'de> + Send + 'static,
{
    let t0 = Instant::now();
    let out = pool
        .map_chunked(f, vec![job; processes], 1)
        .context("a worker failed")?;
    Ok((out, t0.elapsed()))
}

/// Prints a phase's time and rate.
fn timed(label: &str, took: Duration, increments: u64) {
    fact(
        label,
        format!(
            "{:.3} s   {:.1} M increments/s",
            took.as_secs_f64(),
            increments as f64 / took.as_secs_f64().max(1e-9) / 1e6
        ),
    );
}

/// Waits (at most 10 s) until the pool has `processes` workers again, none
/// of them `dead`.
fn wait_for_replacement(pool: &Pool, processes: usize, dead: Pid) -> Vec<Pid> {
    let t0 = Instant::now();
    loop {
        let pids = pool.worker_pids();
        if (pids.len() == processes && !pids.contains(&dead)) || t0.elapsed().as_secs() >= 10 {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols, processes, rounds) = (args.rows, args.cols, args.processes, args.rounds);
    ensure!(
        rows > 0 && cols > 0 && processes > 0 && rounds > 0,
        "need --rows, --cols, --processes and --rounds of at least 1 \
         (got {rows}, {cols}, {processes}, {rounds})"
    );
    ensure!(
        processes <= 1024 && rows.saturating_mul(cols) <= 1 << 20,
        "this demo is about contention, not size: use at most 1024 --processes and 1M counters"
    );
    let n = (rows * cols) as u64;
    let (expected, increments) = match (processes as u64).checked_mul(rounds) {
        Some(e) => (e, e.checked_mul(n)),
        None => (0, None),
    };
    let increments = increments.with_context(|| {
        format!("{rounds} rounds of {n} counters by {processes} workers overflow a u64 counter")
    })?;
    common::heading(
        "locked",
        "Array(lock=True): shared counters with and without the lock, and a holder killed",
    );
    fact("counters", format!("{rows} x {cols} u64"));
    fact("processes", processes);
    fact(
        "increments",
        format!("{rounds} rounds x {n} counters x {processes} workers = {increments}"),
    );

    // ANCHOR: create
    let shared = Counters {
        racy: SharedArray::new(&[rows, cols])?,
        atomic: SharedArray::new(&[rows, cols])?,
        locked: SharedArray::new(&[rows, cols])?,
        rounds: SharedArray::<_, Locked>::full(&[], 0)?,
        start: SharedArray::new(&[ATTEMPTS + 3])?,
    };
    let for_workers = shared.clone();
    let pool = Pool::builder()
        .processes(processes)
        .initializer(move || {
            let _ = COUNTERS.set(for_workers.clone());
        })
        .build()
        .context("starting the pool")?;
    // ANCHOR_END: create
    let parties = processes as u32;

    // 1. Without a lock. Updates are lost only when two workers run at the
    // same moment; on a busy machine they may take turns on one core
    // instead, so the phase is tried again (at most `ATTEMPTS` times) until
    // they overlap.
    let mut counted = increments;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            fact(
                "  again",
                "no update lost: the workers took turns instead of running at once",
            );
            shared.racy.fill(0);
        }
        let (_, took) = run_phase(
            &pool,
            add_without_lock,
            Job {
                rounds,
                parties,
                line: attempt,
            },
            processes,
        )?;
        timed("without a lock (get, set)", took, increments);
        counted = shared.racy.iter().sum();
        if counted != increments || processes == 1 {
            break;
        }
    }
    let lost = increments - counted.min(increments);
    fact(
        "  counted",
        format!(
            "{counted} of {increments}: {lost} updates lost ({:.1}%)",
            lost as f64 * 100.0 / increments as f64
        ),
    );
    if lost == 0 && processes > 1 {
        fact(
            "  note",
            "the workers never ran at the same moment (a busy machine?), so nothing could be \
             lost; more --rounds make an overlap likelier",
        );
    }

    // 2. Atomic adds.
    let (_, took) = run_phase(
        &pool,
        add_atomically,
        Job {
            rounds,
            parties,
            line: ATTEMPTS,
        },
        processes,
    )?;
    timed("atomic fetch_add, no lock", took, increments);
    let atomic_total: u64 = shared.atomic.iter().sum();
    fact("  counted", format!("{atomic_total} of {increments}"));

    // 3. With the lock.
    let (done, took) = run_phase(
        &pool,
        add_with_lock,
        Job {
            rounds,
            parties,
            line: ATTEMPTS + 1,
        },
        processes,
    )?;
    for d in done {
        d.map_err(|e| anyhow::anyhow!("a worker could not take the lock: {e}"))?;
    }
    timed("with the lock", took, increments);
    let locked_values: Vec<u64> = shared
        .locked
        .with_lock(|counts| counts.to_vec())
        .map_err(lock_failed)?;
    let locked_total: u64 = locked_values.iter().sum();
    let rounds_done = shared.rounds.with_lock(|r| r[0]).map_err(lock_failed)?;
    fact(
        "  counted",
        format!(
            "{locked_total} of {increments}; rounds (0-d locked array) {rounds_done} of {expected}"
        ),
    );

    // ANCHOR: kill
    // 4. A worker killed while holding the lock.
    let raw = |pids: Vec<Pid>| pids.into_iter().map(Pid::as_raw).collect::<BTreeSet<i32>>();
    let before = raw(pool.worker_pids());
    let (died, _) = common::phase("a holder dies (SIGKILL)", None, || {
        pool.apply(die_holding_the_lock, ())
    });
    let (dead, cause) = match died {
        Err(Error::WorkerDied { pid, cause, .. }) => (pid, cause),
        Err(other) => anyhow::bail!("the dying task failed otherwise than by its death: {other}"),
        Ok(_) => anyhow::bail!("the task that kills itself returned a value"),
    };
    fact("  the task failed", format!("worker {dead} {cause}"));
    let after = raw(wait_for_replacement(&pool, processes, dead));
    let new: Vec<i32> = after.difference(&before).copied().collect();
    fact(
        "  replacement worker",
        format!("{new:?} (workers now {after:?})"),
    );
    let recovery = pool
        .apply(lock_after_the_death, ())
        .context("the task locking after the death failed")?
        .map_err(|e| anyhow::anyhow!("lock() after the death failed: {e}"))?;
    let reported = match recovery.owner_died {
        Some(Some(pid)) => format!("OwnerDied (pid {pid})"),
        Some(None) => "OwnerDied (pid unknown)".to_owned(),
        None => "nothing: the lock was clean".to_owned(),
    };
    fact(
        "  next lock() reported",
        format!(
            "{reported}, in worker {}; counters all {}",
            recovery.pid, recovery.max
        ),
    );
    fact(
        "  Python",
        "would wait forever here: its lock dies with its holder, still held",
    );
    // The work goes on, under the same lock.
    let (done, again) = run_phase(
        &pool,
        add_with_lock,
        Job {
            rounds,
            parties,
            line: ATTEMPTS + 2,
        },
        processes,
    )?;
    for d in done {
        d.map_err(|e| anyhow::anyhow!("a worker could not take the lock: {e}"))?;
    }
    timed("  the work goes on, locked", again, increments);
    let final_values: Vec<u64> = shared
        .locked
        .with_lock(|counts| counts.to_vec())
        .map_err(lock_failed)?;
    // ANCHOR_END: kill

    common::memory_table(
        "memory while the workers hold the counters",
        Some(&pool),
        &[],
    )?;

    // ANCHOR: verify
    ensure!(
        counted <= increments,
        "the unlocked counters hold {counted}, more than the {increments} increments made"
    );
    ensure!(
        shared.atomic.iter().all(|v| v == expected),
        "atomic fetch_add lost updates: the counters hold {atomic_total}, not {increments}"
    );
    ensure!(
        locked_values.iter().all(|&v| v == expected),
        "the locked counters hold {locked_total}, not {increments}: the lock let updates through"
    );
    ensure!(
        rounds_done == expected,
        "the 0-d locked array counted {rounds_done} rounds, not {expected}"
    );
    ensure!(
        cause.signal_name() == Some("SIGKILL") && before.contains(&dead.as_raw()),
        "expected worker {dead} (one of {before:?}) to die of SIGKILL, it {cause}"
    );
    ensure!(
        after.len() == processes && !after.contains(&dead.as_raw()) && new.len() == 1,
        "expected one replacement for worker {dead}, the workers are {after:?} (were {before:?})"
    );
    ensure!(
        recovery.owner_died == Some(Some(dead.as_raw())),
        "the next lock() reported {reported}, not that worker {dead} died holding it"
    );
    ensure!(
        recovery.min == expected + 1 && recovery.max == expected + 1,
        "after the death the counters range over {}..={}, not {}: the data is not intact",
        recovery.min,
        recovery.max,
        expected + 1
    );
    ensure!(
        final_values.iter().all(|&v| v == 2 * expected + 1) && !shared.locked.is_poisoned(),
        "after the recovery the locked counters are not all {}",
        2 * expected + 1
    );
    common::verified(format!(
        "with the lock {locked_total} of {increments} counted (exact), atomic exact, \
         {lost} updates lost without a lock; worker {dead} killed by SIGKILL holding the lock, \
         replaced, OwnerDied reported with the data intact, work went on"
    ));
    // ANCHOR_END: verify
    pool.close();
    pool.join()?;
    Ok(())
}

/// The error of a `with_lock` in the parent (nothing died there).
fn lock_failed<G>(e: LockError<G>) -> anyhow::Error {
    anyhow::anyhow!("the parent could not take the lock: {e}")
}
