//! [`Pool`]: the calls a Python user knows from `multiprocessing.Pool`.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::unistd::Pid;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::arg::Arg;
use crate::async_result::{ApplySink, AsyncResult, Canceller, MapSink};
use crate::builder::PoolBuilder;
use crate::collector::Shared;
use crate::context::{Context, IMapWith, WithContext, shipping, with_call};
use crate::error::{Error, Result};
use crate::imap::{IMap, pull};
use crate::mailbox::{CancelFlag, mailbox};
use crate::scheduler::{Chunking, JobId, JobSpec, Phase};
use crate::starmap::{StarFn, star_call};
use crate::stats::{Counters, PoolStats, live_peak_rss};
use crate::task::{Call, Items};

/// A map's encoded items are handed to the scheduler in blocks of about
/// this many bytes (or [`BLOCK_ITEMS`] items), so workers start before a
/// big map is fully encoded, without a lock round trip per tiny item.
const BLOCK_BYTES: usize = 1 << 20;
const BLOCK_ITEMS: usize = 16 * 1024;

/// A pool of forked worker processes, like Python's
/// `multiprocessing.Pool`.
///
/// Functions are plain `fn(T) -> R` pointers (non-capturing closures
/// coerce): a worker is a fork of this program, so the function is at the
/// same address there. Arguments and results cross the pipes serialised
/// with serde, in the pool's own binary format (arrays of plain numbers
/// move as whole blocks of bytes); anything else a worker needs comes through the
/// [`initializer`](PoolBuilder::initializer) or the memory it inherited.
///
/// A task that panics returns the panic as that item's error; a worker that
/// dies fails the tasks it held, with its pid and signal, and is replaced;
/// nothing waits forever. Dropping the pool terminates it: no worker,
/// zygote, zombie or descriptor outlives it.
///
/// `Pool` is `Send + Sync`: share it by reference between threads.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// let squares = pool.map(|x: u64| x * x, 0..10)?;
/// assert_eq!(squares[9], 81);
/// # Ok(()) }
/// ```
///
/// A closure that captures cannot cross the fork; pass the data as the
/// argument, or through the initializer:
///
/// ```compile_fail
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// let offset = 5;
/// let out = pool.map(move |x: u64| x + offset, 0..10)?;
/// # Ok(()) }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    collector: parking_lot::Mutex<Option<JoinHandle<()>>>,
    processes: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("zygote", &self.shared.zygote.as_raw())
            .field("workers", &st.pids())
            .field("phase", &st.phase)
            .field("queued_items", &st.queued_items())
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers with no initializer.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with an initializer, recycling, or the default
    /// number of processes.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    pub(crate) fn from_parts(
        shared: Arc<Shared>,
        collector: JoinHandle<()>,
        processes: usize,
    ) -> Self {
        Pool {
            shared,
            collector: parking_lot::Mutex::new(Some(collector)),
            processes,
        }
    }

    /// The number of worker processes the pool keeps.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Pids of the workers alive now (replacements appear under new pids).
    pub fn worker_pids(&self) -> Vec<Pid> {
        self.shared.lock().pids()
    }

    /// What each worker did: tasks and items done, busy time, peak memory
    /// (RSS), for the workers alive now and those that exited (crashed,
    /// recycled). Reads `/proc/<pid>/status` of each live worker.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// pool.map_chunked(|x: u64| x * 2, 0..100, 10)?;
    /// let s = pool.stats();
    /// assert_eq!(s.workers.len(), 2);
    /// assert_eq!(s.tasks(), 10);
    /// assert_eq!(s.items(), 100);
    /// for w in &s.workers {
    ///     println!("worker {}: {} tasks, busy {:?}, peak RSS {} bytes", w.pid, w.tasks, w.busy, w.peak_rss);
    ///     assert!(w.peak_rss > 0);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> PoolStats {
        let (live, exited) = {
            let st = self.shared.lock();
            let live: Vec<(Pid, Counters)> =
                st.workers.iter().map(|w| (w.pid, w.counters)).collect();
            (live, st.exited.to_vec())
        };
        let workers = live
            .into_iter()
            .map(|(pid, c)| c.stats(pid, live_peak_rss(pid), true))
            .collect();
        PoolStats { workers, exited }
    }

    /// Pid of the zygote, the process that forks the workers.
    pub fn zygote_pid(&self) -> Pid {
        self.shared.zygote
    }

    /// What an [`AsyncResult`] needs to cancel the tasks carrying `flag`.
    fn canceller(&self, flag: CancelFlag) -> Canceller {
        Canceller::new(flag, &self.shared)
    }

    /// Starts a job (see [`crate::scheduler`]).
    pub(crate) fn open_job(&self, spec: JobSpec) -> Result<JobId> {
        self.shared.lock().open_job(spec)
    }

    /// Drops what job `id` has not yet sent to a worker.
    pub(crate) fn cancel_job(&self, job: JobId) {
        self.shared.lock().cancel(job);
    }

    /// Adds encoded items to a job (`done`: they are its last).
    pub(crate) fn append(&self, job: JobId, items: Items, done: bool) -> Result<()> {
        let full = self.shared.lock().append(job, items, done)?;
        if full {
            self.shared.wake();
        }
        Ok(())
    }

    /// Applies `f` to every item, in parallel, and returns the results in
    /// input order.
    ///
    /// Items are encoded once, up front, and cut into tasks only as workers
    /// are about to need them (guided self-scheduling): the first tasks are
    /// single items, then each task takes about 100 µs of items by this
    /// job's own measured cost, never more than the remaining items over
    /// twice the workers. So cheap items travel in large chunks, costly
    /// ones one by one, and chunks shrink as the job drains. To fix the
    /// chunk size yourself, use [`map_chunked`](Self::map_chunked).
    ///
    /// # Errors
    ///
    /// The error of the lowest-numbered item that failed (a panic, a dead
    /// worker, a value that would not encode or decode); every other item
    /// still ran. To get every item's own outcome, use [`imap`](Self::imap).
    /// If the input iterator itself panics, [`Error::InputPanicked`] and
    /// nothing runs.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let lens = pool.map(|s: String| s.len(), ["a", "bb", "ccc"].map(String::from))?;
    /// assert_eq!(lens, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn map<T, R, A>(&self, f: fn(T) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`map`](Self::map) with `chunksize` items per task: larger chunks
    /// cost less per item, smaller ones balance better.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let out = pool.map_chunked(|x: i32| -x, 0..100, 64)?;
    /// assert_eq!(out[99], -99);
    /// # Ok(()) }
    /// ```
    pub fn map_chunked<T, R, A>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async_chunked(f, items, chunksize).get()
    }

    /// Starts a [`map`](Self::map) and returns at once with a handle to
    /// its results. The input is encoded before this returns.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let h = pool.map_async(|x: u8| x as u32 * 2, [1, 2, 3]);
    /// // ... other work ...
    /// assert_eq!(h.get()?, [2, 4, 6]);
    /// # Ok(()) }
    /// ```
    pub fn map_async<T, R, A>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_call(Call::of(f), std::any::type_name::<T>(), items, None)
    }

    /// [`map_async`](Self::map_async) with `chunksize` items per task.
    pub fn map_async_chunked<T, R, A>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> AsyncResult<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let chunksize = Some(chunksize.max(1));
        self.map_call(Call::of(f), std::any::type_name::<T>(), items, chunksize)
    }

    /// Collects `items` (an input that panics fails the map in its place;
    /// nothing runs), encodes them (each as it is, decoded in the worker as
    /// the argument of `call`) and submits them as one job: tasks of
    /// `chunksize` items, or guided chunks when `None`. `arg_type` names
    /// the argument type in errors.
    pub(crate) fn map_call<A, R>(
        &self,
        call: Call,
        arg_type: &'static str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let mut input = items.into_iter();
        let mut items = Vec::with_capacity(input.size_hint().0);
        loop {
            match pull(&mut input, items.len()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return AsyncResult::failed(e),
            }
        }
        let total = items.len();
        let sink = Box::new(MapSink::<R>::new(arg_type, total));
        let (tx, rx) = mailbox();
        let cancel = rx.cancel_flag();
        let spec = JobSpec {
            header: call.header(),
            chunking: match chunksize {
                Some(n) => Chunking::Fixed(n.max(1)),
                None => Chunking::Guided { total },
            },
            sink: tx,
        };
        let (submitted, shipped) = shipping(|| self.submit_items(spec, items.into_iter()));
        match submitted {
            Ok(()) => AsyncResult::new(rx, total, sink, Some(self.canceller(cancel)))
                .keep_shipped(shipped),
            Err(e) => {
                // Tasks submitted before the failure need not run.
                self.canceller(cancel).cancel();
                AsyncResult::failed(e)
            }
        }
    }

    /// Opens a job for `spec` and appends `items` to it in blocks. The job
    /// opens with its first block, under the same lock (taking it twice
    /// made the submitting thread and the collector contend for it in a
    /// loop of `apply_async`); a job of one block (an `apply`, a short
    /// `map`) does not wait for the lock at all ([`Shared::submit_whole`]).
    fn submit_items<T: Serialize>(
        &self,
        spec: JobSpec,
        items: impl ExactSizeIterator<Item = T>,
    ) -> Result<()> {
        let mut items = items;
        let mut spec = Some(spec);
        let mut job = None;
        let mut next = 0;
        loop {
            let mut block = Items::starting_at(next);
            match items.len() {
                // `apply`'s one argument: a big `Vec` of plain numbers is
                // written from its own memory when its task goes.
                1 if next == 0 => block.push_owned(items.next().expect("one item"), 0)?,
                _ => block.fill(&mut items, BLOCK_ITEMS, BLOCK_BYTES)?,
            }
            next += block.len();
            // (An empty block: the input ended early, or there was none.)
            let done = items.len() == 0 || block.len() == 0;
            job = self.open_and_append(job, &mut spec, block, done)?;
            if done {
                return Ok(());
            }
        }
    }

    /// Appends `items` to `job`, or to a job opened now for `spec` if
    /// `job` is `None`; returns the job, or `None` if `items` were all of
    /// it (then submitted with [`Shared::submit_whole`], which does not
    /// wait for the state lock).
    fn open_and_append(
        &self,
        job: Option<JobId>,
        spec: &mut Option<JobSpec>,
        items: Items,
        done: bool,
    ) -> Result<Option<JobId>> {
        if job.is_none() && done && items.len() > 0 {
            let spec = spec.take().expect("a job opens once");
            self.shared.submit_whole(spec, items)?;
            return Ok(None);
        }
        let mut st = self.shared.lock();
        let id = match job {
            Some(id) => id,
            None => st.open_job(spec.take().expect("a job opens once"))?,
        };
        let full = st.append(id, items, done)?;
        drop(st);
        if full {
            self.shared.wake();
        }
        Ok(Some(id))
    }

    /// A lazy, ordered map: yields each item's `Result` in input order,
    /// pulling input only as results are consumed (bounded memory for
    /// endless inputs). `chunksize` items go in each task.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut it = pool.imap(|x: u32| 100 / x, [1, 0, 5], 1);
    /// assert_eq!(it.next().unwrap()?, 100);
    /// assert!(it.next().unwrap().is_err()); // division by zero panicked
    /// assert_eq!(it.next().unwrap()?, 20);
    /// assert!(it.next().is_none());
    /// # Ok(()) }
    /// ```
    pub fn imap<T, R, I>(
        &self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<'_, T, R, I::IntoIter>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        IMap::new(self, Call::of(f), items.into_iter(), chunksize, true)
    }

    /// As [`imap`](Self::imap), but yields results in the order they
    /// complete. Use [`Error::item`] to tell which item an error belongs
    /// to; return the index with the value when order matters.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut got: Vec<(usize, u64)> = pool
    ///     .imap_unordered(|(i, x): (usize, u64)| (i, x * 2), (0..100).map(|i| (i, i as u64)), 1)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got[42], (42, 84));
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<T, R, I>(
        &self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<'_, T, R, I::IntoIter>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        IMap::new(self, Call::of(f), items.into_iter(), chunksize, false)
    }

    /// [`imap`](Self::imap) with the chunk size chosen by the pool (Python's
    /// `imap(f, items)` without `chunksize`): for an input that knows its
    /// length, about 16 tasks per worker (results stream back in many small
    /// steps, tiny items do not cost a round trip each); for one that does
    /// not (an endless iterator, a filter), one item per task.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let evens: Vec<u64> = pool.imap_auto(|x: u64| x * 2, 0..1000).collect::<Result<_, _>>()?;
    /// assert_eq!(evens[999], 1998);
    /// # Ok(()) }
    /// ```
    pub fn imap_auto<T, R, I>(&self, f: fn(T) -> R, items: I) -> IMap<'_, T, R, I::IntoIter>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        let chunksize = self.stream_chunksize(&items);
        self.imap(f, items, chunksize)
    }

    /// [`imap_unordered`](Self::imap_unordered) with the chunk size chosen
    /// by the pool, as [`imap_auto`](Self::imap_auto).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let sum: u64 = pool.imap_unordered_auto(|x: u64| x * 2, 0..1000).map(Result::unwrap).sum();
    /// assert_eq!(sum, 999_000);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered_auto<T, R, I>(
        &self,
        f: fn(T) -> R,
        items: I,
    ) -> IMap<'_, T, R, I::IntoIter>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        let chunksize = self.stream_chunksize(&items);
        self.imap_unordered(f, items, chunksize)
    }

    /// The chunk size of `imap_auto`: about 16 tasks per worker when the
    /// input knows its length, else 1.
    fn stream_chunksize(&self, items: &impl Iterator) -> usize {
        match items.size_hint() {
            (lo, Some(hi)) if lo == hi => lo.div_ceil(self.processes * 16).max(1),
            _ => 1,
        }
    }

    /// Runs `f(arg)` in a worker and waits for the result.
    ///
    /// # Errors
    ///
    /// The task's error (see [`Error`]), or why it could not be submitted.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(1)?;
    /// let pid: u32 = pool.apply(|()| std::process::id(), ())?;
    /// assert_ne!(pid, std::process::id());
    /// # Ok(()) }
    /// ```
    pub fn apply<T, R, A>(&self, f: fn(T) -> R, arg: A) -> Result<R>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, arg).get()
    }

    /// Starts `f(arg)` in a worker and returns at once with a handle.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let handles: Vec<_> = (0..4u64).map(|i| pool.apply_async(|x: u64| x * 10, i)).collect();
    /// let out: Vec<u64> = handles.into_iter().map(|h| h.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(out, [0, 10, 20, 30]);
    /// # Ok(()) }
    /// ```
    pub fn apply_async<T, R, A>(&self, f: fn(T) -> R, arg: A) -> AsyncResult<R>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_call(Call::of(f), std::any::type_name::<T>(), arg)
    }

    /// Submits a job of one item, `arg` (decoded in the worker as the
    /// argument of `call`); `arg_type` names the argument type in errors.
    fn apply_call<A, R>(&self, call: Call, arg_type: &'static str, arg: A) -> AsyncResult<R>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let sink = Box::new(ApplySink::<R>::new(arg_type));
        let (tx, rx) = mailbox();
        let cancel = rx.cancel_flag();
        let spec = JobSpec {
            header: call.header(),
            chunking: Chunking::Fixed(1),
            sink: tx,
        };
        let (submitted, shipped) = shipping(|| self.submit_items(spec, std::iter::once(arg)));
        match submitted {
            Ok(()) => {
                AsyncResult::new(rx, 1, sink, Some(self.canceller(cancel))).keep_shipped(shipped)
            }
            Err(e) => AsyncResult::failed(e),
        }
    }

    /// [`map`](Self::map) with a context: `f(&ctx, item)` for every item,
    /// where `ctx` is any value made at any time (after the pool started
    /// too), like Python's `pool.map(functools.partial(f, table), items)`.
    /// The context is encoded once and each worker reads it once per call,
    /// not once per task (see [`Context`]); nothing needs a `static`. It
    /// may be unsized: a `&[u64]` context reaches `f` as a `&[u64]` (it
    /// travels as its owned form, `Vec<u64>`).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map); [`Error::Encode`] if the context does not
    /// encode.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn lookup(table: &[u64], i: usize) -> u64 {
    ///     table[i]
    /// }
    /// let pool = forkpool::Pool::new(2)?;
    /// let table: Vec<u64> = (0..1000).map(|x| x * 3).collect(); // made after the pool
    /// let out = pool.map_with(table.as_slice(), lookup, 0..1000)?;
    /// assert_eq!(out[999], 2997);
    /// # Ok(()) }
    /// ```
    pub fn map_with<C, T, R>(
        &self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_with_async(ctx, f, items).get()
    }

    /// Starts a [`map_with`](Self::map_with) and returns at once with a
    /// handle; the context is encoded before this returns (the borrow
    /// ends here) and kept until the handle is done.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let h = pool.map_with_async("ab", |s: &str, n: usize| s.repeat(n), [1, 2]);
    /// assert_eq!(h.get()?, ["ab", "abab"]);
    /// # Ok(()) }
    /// ```
    pub fn map_with_async<C, T, R>(
        &self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> AsyncResult<Vec<R>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let ctx = match Context::<C::Owned>::encode(ctx) {
            Ok(c) => c,
            Err(e) => return AsyncResult::failed(e),
        };
        let items = items.into_iter().map(move |t| (ctx.clone(), t));
        // The items' clones keep the context; their job keeps it open.
        self.map_call(with_call(f), std::any::type_name::<T>(), items, None)
    }

    /// [`imap`](Self::imap) with a context: yields `f(&ctx, item)` for
    /// every item, in input order, `ctx` made at any time (see
    /// [`map_with`](Self::map_with)). The context is encoded when this is
    /// called.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if the context does not encode, [`Error::Io`] if
    /// its memory file cannot be made; each item's own error comes with it.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let table: Vec<u64> = (0..100).map(|x| x * x).collect();
    /// let mut it = pool.imap_with(table.as_slice(), |t: &[u64], i: usize| t[i], [3, 9], 1)?;
    /// assert_eq!(it.next().unwrap()?, 9);
    /// assert_eq!(it.next().unwrap()?, 81);
    /// # Ok(()) }
    /// ```
    pub fn imap_with<'p, C, T, R, I>(
        &'p self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMapWith<'p, C::Owned, T, R, I::IntoIter>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_with_order(ctx, f, items, chunksize, true)
    }

    /// [`imap_unordered`](Self::imap_unordered) with a context (see
    /// [`imap_with`](Self::imap_with)): results in completion order.
    ///
    /// # Errors
    ///
    /// As [`imap_with`](Self::imap_with).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let sum: u64 = pool
    ///     .imap_unordered_with(&10u64, |k: &u64, x: u64| k * x, 0..10, 2)?
    ///     .map(Result::unwrap)
    ///     .sum();
    /// assert_eq!(sum, 450);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered_with<'p, C, T, R, I>(
        &'p self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMapWith<'p, C::Owned, T, R, I::IntoIter>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_with_order(ctx, f, items, chunksize, false)
    }

    fn imap_with_order<'p, C, T, R, I>(
        &'p self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Result<IMapWith<'p, C::Owned, T, R, I::IntoIter>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let ctx = Context::<C::Owned>::encode(ctx)?;
        let input = WithContext::new(ctx, items.into_iter());
        Ok(IMap::new(self, with_call(f), input, chunksize, ordered))
    }

    /// [`apply`](Self::apply) with a context: runs `f(&ctx, arg)` in a
    /// worker, `ctx` made at any time (see [`map_with`](Self::map_with)).
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply); [`Error::Encode`] if the context does not
    /// encode.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(1)?;
    /// let words = vec!["a".to_string(), "bb".to_string()];
    /// let n = pool.apply_with(&words[..], |w: &[String], i: usize| w[i].len(), 1)?;
    /// assert_eq!(n, 2);
    /// # Ok(()) }
    /// ```
    pub fn apply_with<C, T, R>(&self, ctx: &C, f: fn(&C, T) -> R, arg: T) -> Result<R>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let ctx = Context::<C::Owned>::encode(ctx)?;
        self.apply_call(with_call(f), std::any::type_name::<T>(), (ctx, arg))
            .get()
    }

    /// Applies a function of several arguments to every tuple of
    /// arguments, in parallel, like Python's `Pool.starmap`: `f(a, b)` for
    /// each `(a, b)`, with 2, 3 or 4 arguments. Results in input order.
    ///
    /// `f` is a `fn` item or a closure that captures nothing (see
    /// [`StarFn`]); items go out in chunks as for [`map`](Self::map).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn add(a: u64, b: u64) -> u64 {
    ///     a + b
    /// }
    /// let pool = forkpool::Pool::new(2)?;
    /// let sums = pool.starmap(add, vec![(1, 2), (3, 4)])?;
    /// assert_eq!(sums, [3, 7]);
    /// let joined = pool.starmap(|s: String, n: usize, c: char| format!("{s}{}", c.to_string().repeat(n)),
    ///                           [("a".to_string(), 2, '!')])?;
    /// assert_eq!(joined, ["a!!"]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async(f, items).get()
    }

    /// Starts a [`starmap`](Self::starmap) and returns at once with a
    /// handle to its results, like Python's `Pool.starmap_async`.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let h = pool.starmap_async(|a: u32, b: u32, c: u32, d: u32| a * b * c * d, [(1, 2, 3, 4)]);
    /// assert_eq!(h.get()?, [24]);
    /// # Ok(()) }
    /// ```
    pub fn starmap_async<F, Args>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> AsyncResult<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f; // zero-sized: the trampoline knows it by its type
        let call = star_call::<F, Args>();
        self.map_call(call, std::any::type_name::<Args>(), items, None)
    }

    /// Takes no new work; what was submitted still runs. Follow with
    /// [`join`](Self::join) to wait for the workers to finish and exit.
    pub fn close(&self) {
        let mut st = self.shared.lock();
        if matches!(st.phase, Phase::Starting | Phase::Running) {
            st.phase = Phase::Closed;
        }
        drop(st);
        self.shared.wake();
    }

    /// Waits until every worker and the zygote have exited and been
    /// reaped. Call [`close`](Self::close) (to finish the submitted work)
    /// or [`terminate`](Self::terminate) first.
    ///
    /// # Errors
    ///
    /// [`Error::StillRunning`] if neither was called.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let h = pool.map_async(|x: u32| x + 1, 0..10);
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(h.get()?.len(), 10);
    /// assert!(pool.worker_pids().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn join(&self) -> Result<()> {
        if matches!(self.shared.lock().phase, Phase::Starting | Phase::Running) {
            return Err(Error::StillRunning);
        }
        self.wait_collector();
        Ok(())
    }

    /// Stops at once: the workers are killed, the work they held and the
    /// work queued fail with [`Error::Terminated`]. Returns once every
    /// process is reaped.
    pub fn terminate(&self) {
        {
            let mut st = self.shared.lock();
            if st.phase != Phase::Finished {
                st.terminate(&Error::Terminated);
                st.shut_ctrl();
            }
        }
        self.shared.wake();
        self.wait_collector();
    }

    /// Waits for the collector thread to end (it ends once the zygote is
    /// reaped). The lock is held while joining, so a second caller waits
    /// for the first join to finish.
    fn wait_collector(&self) {
        let mut handle = self.collector.lock();
        if let Some(handle) = handle.take() {
            // The collector catches its own panics; a join error cannot
            // carry anything more.
            let _ = handle.join();
        }
    }
}

impl Drop for Pool {
    /// Terminates the pool (as Python's `with Pool() as p:` does on exit)
    /// unless it was already joined.
    fn drop(&mut self) {
        self.terminate();
        // The memory kept for the next big value is the pools' cache: not
        // held on past them.
        crate::frame::free_spares();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn inc(x: u64) -> u64 {
        x + 1
    }

    /// How long a test waits for a thread that should not be blocked.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Runs `pool.apply_async(inc, arg)` on another thread while `guard`
    /// keeps the state locked; the guard back, and the handle if the call
    /// returned in time.
    fn apply_async_while_locked<G>(
        pool: &Pool,
        arg: u64,
        guard: G,
    ) -> (G, Option<AsyncResult<u64>>) {
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send(pool.apply_async(inc, arg));
            });
            let handle = rx.recv_timeout(DEADLINE).ok();
            // (A submitter that waits for the lock is let go here, so the
            // scope ends either way.)
            (guard, handle)
        })
    }

    #[test]
    fn apply_async_waited_for_the_state_lock_that_another_thread_held() {
        let pool = Pool::new(2).unwrap();
        let (guard, handle) = apply_async_while_locked(&pool, 41, pool.shared.lock());
        drop(guard);
        let handle = handle.expect("apply_async returned while another thread held the lock");
        // Opened when the holder released the lock.
        assert_eq!(handle.get().unwrap(), 42);
    }

    #[test]
    fn a_job_submitted_while_the_lock_was_held_ran_after_a_close_that_followed_it() {
        let pool = Pool::new(2).unwrap();
        // A bare guard: releasing it does not open the waiting job; the
        // next `lock` (here `close`'s) must open it before closing.
        let (guard, handle) = apply_async_while_locked(&pool, 1, pool.shared.state.lock());
        drop(guard);
        let handle = handle.expect("apply_async returned while another thread held the lock");
        pool.close();
        pool.join().unwrap();
        assert_eq!(handle.get().unwrap(), 2);
        assert_eq!(pool.stats().tasks(), 1, "the job ran once");
    }

    #[test]
    fn no_job_submitted_by_threads_racing_for_the_lock_was_lost() {
        const THREADS: u64 = 4;
        const EACH: u64 = 3_000;
        let pool = Pool::new(2).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let sums: Vec<u64> = std::thread::scope(|s| {
            // One more thread takes the lock over and over, so submitters
            // often find it held and leave their jobs waiting.
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = pool.stats();
                }
            });
            let submitters: Vec<_> = (0..THREADS)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        let handles: Vec<_> = (0..EACH)
                            .map(|i| pool.apply_async(inc, t * EACH + i))
                            .collect();
                        let mut sum = 0;
                        for mut h in handles {
                            // A lost job would never complete: a deadline,
                            // not a hang.
                            sum += h.get_timeout(DEADLINE).expect("every job ran");
                        }
                        sum
                    })
                })
                .collect();
            let sums = submitters.into_iter().map(|h| h.join().unwrap()).collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sums
        });
        let want: u64 = (1..=THREADS * EACH).sum();
        assert_eq!(sums.iter().sum::<u64>(), want);
        assert_eq!(pool.stats().tasks(), THREADS * EACH, "each job ran once");
    }

    #[test]
    fn a_job_waiting_for_the_lock_when_the_pool_closed_failed_with_closed() {
        let pool = Pool::new(2).unwrap();
        let mut st = pool.shared.state.lock();
        st.phase = Phase::Closed;
        let (guard, handle) = apply_async_while_locked(&pool, 1, st);
        drop(guard);
        let handle = handle.expect("apply_async returned while another thread held the lock");
        // Whoever locks next opens it, and the pool takes no new work.
        pool.close();
        pool.join().unwrap();
        assert!(matches!(handle.get(), Err(Error::Closed)));
        assert_eq!(pool.stats().tasks(), 0, "nothing ran");
    }
}
