//! Shared-array workloads through the pool: fills by 1, 2 and 4 processes
//! (warm and cold), a large array passed by value or shared, and counters
//! behind a lock or lock-free.
//!
//! Workers reach the arrays as a Python user's would: an initializer stores
//! the handle in a `static OnceLock` (the notes' `RawArray` + `Pool(initializer=...)`).
//! The parent never sets these statics, so each new pool's workers (forked
//! from the parent's state at `build`) set them afresh.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use forkpool::Pool;
use forkpool_shm::{Locked, SharedArray};

/// Elements per row of the benchmark arrays: 512 KiB rows of `f64`.
pub const ROW: usize = 1 << 16;

/// Rows of `bytes` bytes of `f64` in rows of [`ROW`].
pub fn rows_for(bytes: usize) -> usize {
    (bytes / 8).div_ceil(ROW)
}

static ARRAY: OnceLock<SharedArray<f64>> = OnceLock::new();
static COUNTER: OnceLock<SharedArray<u64>> = OnceLock::new();
static LOCKED: OnceLock<SharedArray<u64, Locked>> = OnceLock::new();
static SLOTS: OnceLock<SharedArray<u64>> = OnceLock::new();

/// The array the worker's initializer stored.
fn worker_array() -> &'static SharedArray<f64> {
    ARRAY
        .get()
        .expect("the pool's initializer stores the array")
}

/// A pool of `processes` workers whose initializer stores `array` for the
/// tasks below, and, with `prefault_all`, maps every page of it into the
/// worker (so later fills take no page fault).
///
/// # Panics
///
/// If the pool cannot start.
pub fn pool_with_array(processes: usize, array: &SharedArray<f64>, prefault_all: bool) -> Pool {
    let array = array.clone();
    Pool::builder()
        .processes(processes)
        .try_initializer(move || {
            if prefault_all {
                array
                    .prefault(0..array.nrows())
                    .map_err(|e| e.to_string())?;
            }
            ARRAY
                .set(array.clone())
                .map_err(|_| "the array was already set in this worker".to_string())
        })
        .build()
        .expect("pool")
}

/// Task: fill rows `[first, end)` of the worker's array with `value`
/// (atomic relaxed stores, [`SharedArray::fill_rows`]).
pub fn fill_block((first, end, value): (usize, usize, f64)) {
    worker_array().fill_rows(first..end, value);
}

/// Task: map rows `[first, end)` into this worker in one call
/// ([`SharedArray::prefault`]), then fill them with `value`.
pub fn prefault_fill_block((first, end, value): (usize, usize, f64)) {
    let array = worker_array();
    array.prefault(first..end).expect("prefault");
    array.fill_rows(first..end, value);
}

/// The tasks of a fill of `array` by `processes` workers: one block of rows each.
pub fn fill_tasks(
    array: &SharedArray<f64>,
    processes: usize,
    value: f64,
) -> Vec<(usize, usize, f64)> {
    array
        .row_blocks(processes)
        .into_iter()
        .map(|r| (r.start, r.end, value))
        .collect()
}

/// A fill of an array the workers have already mapped (their initializer
/// pre-faulted all of it): the steady state of a pool working on one array,
/// bound by memory bandwidth.
#[derive(Debug)]
pub struct WarmFill {
    array: SharedArray<f64>,
    pool: Pool,
    value: f64,
}

impl WarmFill {
    /// An array of `bytes` bytes and a pool of `processes` workers that have
    /// mapped all of it.
    ///
    /// # Panics
    ///
    /// If the array or the pool cannot be created.
    pub fn new(bytes: usize, processes: usize) -> WarmFill {
        let array = SharedArray::<f64>::new(&[rows_for(bytes), ROW]).expect("array");
        let pool = pool_with_array(processes, &array, true);
        WarmFill {
            array,
            pool,
            value: 0.0,
        }
    }

    /// Times one fill of the whole array, one block of rows per worker.
    pub fn run(&mut self) -> Duration {
        self.value += 1.0;
        let tasks = fill_tasks(&self.array, self.pool.processes(), self.value);
        let start = Instant::now();
        self.pool.map(fill_block, tasks).expect("fill");
        let took = start.elapsed();
        assert_eq!(self.array.get(self.array.len() - 1), self.value);
        took
    }
}

/// A first fill: creating an array of `bytes` bytes (timed), starting a pool
/// of `processes` workers on it (not timed), and their first fill (timed):
/// each worker pre-faults its rows in one call, then fills them. Bound by
/// page allocation and page faults, not by bandwidth.
///
/// # Panics
///
/// If the array or the pool cannot be created.
pub fn cold_fill(bytes: usize, processes: usize) -> Duration {
    let start = Instant::now();
    let array = SharedArray::<f64>::new(&[rows_for(bytes), ROW]).expect("array");
    let created = start.elapsed();
    let pool = pool_with_array(processes, &array, false);
    let tasks = fill_tasks(&array, processes, 1.0);
    let start = Instant::now();
    pool.map(prefault_fill_block, tasks).expect("fill");
    let filled = start.elapsed();
    assert_eq!(array.get(array.len() - 1), 1.0);
    drop(pool);
    created + filled
}

/// The sum of `xs` in eight independent lanes, so the compiler can use
/// vector instructions (numpy's `sum` is vectorised too; a plain
/// `iter().sum()` is one long dependency chain of additions, bound by their
/// latency rather than by memory).
pub fn sum_f64(xs: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f64>() + rest.iter().sum::<f64>()
}

/// Task: the sum of block `block` of `blocks` of an array passed by value.
pub fn block_sum_by_value((block, blocks, data): (usize, usize, Vec<f64>)) -> f64 {
    let parts = forkpool_shm::split_rows(data.len(), blocks);
    sum_f64(&data[parts[block].clone()])
}

/// Task: the sum of rows `[first, end)` of the worker's shared array.
pub fn block_sum_shared((first, end): (usize, usize)) -> f64 {
    // SAFETY: while a `PassArray` map runs nobody writes the array (the
    // parent wrote it before starting the pools, and tasks only read).
    sum_f64(unsafe { worker_array().rows_unchecked(first..end) })
}

/// `tasks` tasks each summing its block of one large array, with the array
/// passed by value (serialised to every task, as Python's `Pool.map` pickles
/// it) or shared (the workers read the one copy).
#[derive(Debug)]
pub struct PassArray {
    data: Vec<f64>,
    array: SharedArray<f64>,
    by_value: Pool,
    shared: Pool,
    tasks: usize,
    /// The sum of every element: small integers, so exact in any order.
    expected: f64,
}

impl PassArray {
    /// An array of `bytes` bytes of `f64` (as a `Vec` and as a shared array),
    /// and a pool of `processes` workers for each way.
    ///
    /// # Panics
    ///
    /// If an array or a pool cannot be created.
    pub fn new(bytes: usize, processes: usize, tasks: usize) -> PassArray {
        // The pools start before the private `Vec` exists, so their fork
        // copies no page tables for it.
        let array = SharedArray::<f64>::new(&[rows_for(bytes), ROW]).expect("array");
        let shared = pool_with_array(processes, &array, false);
        let by_value = Pool::new(processes).expect("pool");
        let data: Vec<f64> = (0..array.len()).map(|i| (i % 1000) as f64).collect();
        array.write_rows(0, &data);
        let expected = data.iter().sum();
        PassArray {
            expected,
            data,
            array,
            by_value,
            shared,
            tasks,
        }
    }

    /// Times `map(block_sum_by_value, ...)` over `tasks` copies of the array.
    /// The copies are made before the clock starts (Python's `[arr] * 4` is
    /// four references; a Rust caller must clone, at `memcpy` speed).
    pub fn run_by_value(&self) -> Duration {
        let args: Vec<_> = (0..self.tasks)
            .map(|b| (b, self.tasks, self.data.clone()))
            .collect();
        let start = Instant::now();
        let sums = self.by_value.map(block_sum_by_value, args).expect("map");
        let took = start.elapsed();
        assert_eq!(sums.iter().sum::<f64>(), self.expected);
        took
    }

    /// Times `map(block_sum_shared, ...)`: each task reads its rows of the
    /// shared array (the workers map its pages as they read).
    pub fn run_shared(&self) -> Duration {
        let blocks: Vec<(usize, usize)> = self
            .array
            .row_blocks(self.tasks)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        let start = Instant::now();
        let sums = self.shared.map(block_sum_shared, blocks).expect("map");
        let took = start.elapsed();
        assert_eq!(sums.iter().sum::<f64>(), self.expected);
        took
    }

    /// The ceiling for the shared way: the same sums on `threads` threads of
    /// this process over memory it has already mapped (bound by memory
    /// bandwidth).
    pub fn time_threads_sum(&self, threads: usize) -> Duration {
        let parts = forkpool_shm::split_rows(self.data.len(), threads);
        let start = Instant::now();
        let total: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|r| s.spawn(|| sum_f64(&self.data[r])))
                .collect();
            handles.into_iter().map(|h| h.join().expect("sum")).sum()
        });
        let took = start.elapsed();
        assert_eq!(total, self.expected);
        took
    }

    /// Bytes of one copy of the array.
    pub fn bytes(&self) -> usize {
        self.data.len() * 8
    }
}

/// The machine's limits under the pid-fill demo at `rows x cols` `f64`
/// (issue 13), each measured on a new array in this process, in the same
/// run as the demo: what creating, filling, mapping and reading that many
/// bytes costs here, with no pool, no pipes and no checks.
#[derive(Clone, Copy, Debug)]
pub struct BigArrayCeilings {
    /// Populating new shared pages: [`SharedArray::new`] (allocate, zero
    /// and map every page, on one thread per core).
    pub populate: Duration,
    /// The same, with every element written as it is populated:
    /// [`SharedArray::full`].
    pub populate_filled: Duration,
    /// `memset` of the same bytes, already populated, on `threads` threads:
    /// the memory's write bandwidth.
    pub memset: Duration,
    /// Reading them (a vectorised sum), already mapped, on `threads`
    /// threads: the read bandwidth.
    pub read: Duration,
    /// `threads` forked children each mapping its share of the populated
    /// array (`MADV_POPULATE_READ`) and exiting: what the pool's workers
    /// pay for the pages of their rows before touching any.
    pub map_in_children: Duration,
    /// `threads` children, forked beforehand and started at once, each
    /// checking and overwriting its share of the array as the demo's
    /// workers do (a row's pages mapped in one call, then one pass that
    /// compares every element with the value it should hold and writes the
    /// child's pid), with no pool and no tasks: the limit of the workers'
    /// phase.
    pub check_write_in_children: Duration,
}

impl BigArrayCeilings {
    /// Measures each limit once, on `threads` threads or processes.
    ///
    /// # Panics
    ///
    /// If an array cannot be created or a child cannot be forked.
    pub fn measure(rows: usize, cols: usize, threads: usize) -> BigArrayCeilings {
        let start = Instant::now();
        let array = SharedArray::<f64>::new(&[rows, cols]).expect("array");
        let populate = start.elapsed();
        drop(array);
        let start = Instant::now();
        let array = SharedArray::<f64>::full(&[rows, cols], 42.0).expect("array");
        let populate_filled = start.elapsed();
        assert_eq!(array.get(array.len() - 1), 42.0);
        let memset = {
            // SAFETY: no other thread or process uses the array while the
            // slice lives (nothing has forked since it was made).
            let data = unsafe { array.rows_mut_unchecked(0..rows) };
            // SAFETY: the same bytes, seen as bytes: any pattern is an f64.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), data.len() * 8)
            };
            crate::ceiling::memset(bytes, 0x40, threads)
        };
        let read = {
            let blocks = array.row_blocks(threads);
            let start = Instant::now();
            let total: f64 = std::thread::scope(|s| {
                let handles: Vec<_> = blocks
                    .into_iter()
                    .map(|r| {
                        let array = &array;
                        // SAFETY: nobody writes the array while the sum runs.
                        s.spawn(move || sum_f64(unsafe { array.rows_unchecked(r) }))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("sum")).sum()
            });
            let took = start.elapsed();
            assert!(total > 0.0);
            took
        };
        let map_in_children = {
            let start = Instant::now();
            let mut pids = Vec::new();
            for rows in array.row_blocks(threads) {
                // SAFETY: the child only calls `madvise` (through
                // `prefault_read`, which allocates nothing on success) and
                // `_exit`: async-signal-safe, so forking from this
                // multithreaded process is sound.
                match unsafe { nix::unistd::fork() }.expect("fork") {
                    nix::unistd::ForkResult::Child => {
                        let code = i32::from(array.prefault_read(rows).is_err());
                        crate::ceiling::exit_child(code)
                    }
                    nix::unistd::ForkResult::Parent { child } => pids.push(child),
                }
            }
            crate::ceiling::wait_exited_ok(pids);
            start.elapsed()
        };
        let check_write_in_children = {
            use nix::unistd::{read, write};
            use std::os::fd::AsFd;
            // What the memset above left in every element.
            let expected = f64::from_bits(0x4040_4040_4040_4040);
            // Forked first and started together by a byte each, like a
            // pool's workers: the time is the work, not fork and exit.
            let children: Vec<_> = array
                .row_blocks(threads)
                .into_iter()
                .map(|rows| {
                    let array = &array;
                    crate::ceiling::fork_helper(move |from_parent, to_parent| {
                        let mut go = [0u8];
                        if read(from_parent.as_fd(), &mut go) != Ok(1) {
                            return;
                        }
                        let pid = f64::from(nix::unistd::getpid().as_raw());
                        let mut untouched = true;
                        for r in rows {
                            let _ = array.prefault(r..r + 1);
                            // SAFETY: each child has its own block of rows,
                            // and the parent touches none until the child
                            // has answered.
                            let row = unsafe { array.rows_mut_unchecked(r..r + 1) };
                            for v in row.iter_mut() {
                                untouched &= *v == expected;
                                *v = pid;
                            }
                        }
                        let _ = write(&to_parent, &[u8::from(untouched)]);
                    })
                })
                .collect();
            let start = Instant::now();
            for (to_child, _, _) in &children {
                write(to_child, &[1]).expect("start a child");
            }
            for (_, from_child, _) in &children {
                let mut untouched = [0u8];
                assert_eq!(
                    read(from_child.as_fd(), &mut untouched),
                    Ok(1),
                    "a child's answer"
                );
                assert_eq!(untouched, [1], "a child found an element it did not expect");
            }
            let took = start.elapsed();
            crate::ceiling::wait_exited_ok(
                children
                    .into_iter()
                    .map(|(to_child, from_child, pid)| {
                        drop((to_child, from_child));
                        pid
                    })
                    .collect(),
            );
            took
        };
        BigArrayCeilings {
            populate,
            populate_filled,
            memset,
            read,
            map_in_children,
            check_write_in_children,
        }
    }
}

/// Which counter the workers increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A 0-d [`Locked`] array: lock, increment, unlock (`Value(lock=True)`).
    Locked,
    /// A 0-d atomic array: one atomic `fetch_add` on the shared element.
    Atomic,
    /// Each worker its own element of a [`SharedArray`] (its own cache
    /// line): no sharing at all, the ceiling.
    OwnSlot,
}

/// Task: `n` increments of the counter the initializer stored; `slot` is
/// this task's element for [`Counter::OwnSlot`].
pub fn count_locked((n, _slot): (u64, usize)) {
    let counter = LOCKED.get().expect("initializer");
    for _ in 0..n {
        counter.with_lock(|count| count[0] += 1).expect("lock");
    }
}

/// Task: `n` lock-free increments of the shared counter.
pub fn count_atomic((n, _slot): (u64, usize)) {
    let counter = COUNTER.get().expect("initializer");
    for _ in 0..n {
        counter.fetch_add(0, 1, Ordering::AcqRel);
    }
}

/// Task: `n` atomic increments of this task's own element.
pub fn count_own_slot((n, slot): (u64, usize)) {
    let slots = SLOTS.get().expect("initializer");
    for _ in 0..n {
        slots.fetch_add(slot * 8, 1, Ordering::AcqRel); // 64 bytes apart
    }
}

/// Counters incremented by the workers of a pool, each worker `n` times.
#[derive(Debug)]
pub struct Counters {
    pool: Pool,
    locked: SharedArray<u64, Locked>,
    atomic: SharedArray<u64>,
    slots: SharedArray<u64>,
    processes: usize,
}

impl Counters {
    /// The counters and a pool of `processes` workers that can reach them.
    ///
    /// # Panics
    ///
    /// If a counter or the pool cannot be created.
    pub fn new(processes: usize) -> Counters {
        let locked = SharedArray::<_, Locked>::full(&[], 0u64).expect("locked value");
        let atomic = SharedArray::<_>::full(&[], 0u64).expect("shared value");
        let slots = SharedArray::<u64>::new(&[processes * 8]).expect("slots");
        let (l, a, s) = (locked.clone(), atomic.clone(), slots.clone());
        let pool = Pool::builder()
            .processes(processes)
            .initializer(move || {
                let _ = LOCKED.set(l.clone());
                let _ = COUNTER.set(a.clone());
                let _ = SLOTS.set(s.clone());
            })
            .build()
            .expect("pool");
        Counters {
            pool,
            locked,
            atomic,
            slots,
            processes,
        }
    }

    /// Times every worker incrementing `counter` `n` times at once (one
    /// `map` of one task per worker); returns the wall time of all
    /// `n * processes` increments.
    pub fn run(&self, counter: Counter, n: u64) -> Duration {
        let before = self.total(counter);
        let tasks: Vec<(u64, usize)> = (0..self.processes).map(|i| (n, i)).collect();
        let f = match counter {
            Counter::Locked => count_locked,
            Counter::Atomic => count_atomic,
            Counter::OwnSlot => count_own_slot,
        };
        let start = Instant::now();
        self.pool.map_chunked(f, tasks, 1).expect("count");
        let took = start.elapsed();
        let all = n * self.processes as u64;
        assert_eq!(self.total(counter) - before, all, "lost increments");
        took
    }

    /// The number of workers (each runs `n` increments in [`run`](Self::run)).
    pub fn processes(&self) -> usize {
        self.processes
    }

    fn total(&self, counter: Counter) -> u64 {
        match counter {
            Counter::Locked => self.locked.with_lock(|count| count[0]).expect("lock"),
            Counter::Atomic => self.atomic.get(0),
            Counter::OwnSlot => self.slots.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sum_is_the_sum() {
        let xs: Vec<f64> = (0..1003).map(f64::from).collect();
        assert_eq!(sum_f64(&xs), 1002.0 * 1003.0 / 2.0);
        assert_eq!(sum_f64(&[]), 0.0);
    }

    #[test]
    fn both_ways_of_passing_the_array_agree() {
        let pass = PassArray::new(2 * ROW * 8, 2, 4);
        pass.run_by_value();
        pass.run_shared();
        pass.time_threads_sum(3);
    }

    #[test]
    fn big_array_ceilings_measure_every_limit() {
        let c = BigArrayCeilings::measure(64, ROW, 2);
        for d in [
            c.populate,
            c.populate_filled,
            c.memset,
            c.read,
            c.map_in_children,
            c.check_write_in_children,
        ] {
            assert!(d > Duration::ZERO, "{c:?}");
        }
    }

    #[test]
    fn fills_and_counters_count() {
        let mut warm = WarmFill::new(3 * ROW * 8, 2);
        warm.run();
        cold_fill(3 * ROW * 8, 2);
        let counters = Counters::new(2);
        for c in [Counter::Locked, Counter::Atomic, Counter::OwnSlot] {
            counters.run(c, 1000);
        }
    }
}
