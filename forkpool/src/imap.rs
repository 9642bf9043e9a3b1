//! Lazy maps: [`Pool::imap`](crate::Pool::imap) and
//! [`Pool::imap_unordered`](crate::Pool::imap_unordered).
//!
//! Unlike Python's `imap`, which drains its input into the task queue at
//! once, the iterator pulls input only as results are consumed: it keeps
//! at most a bounded number of items outstanding (two chunks per worker at
//! first, then twice the items completed so far, up to
//! [`MAX_TASKS_PER_WORKER`] chunks per worker) and at most [`MAX_BYTES`] of
//! encoded input, so an
//! endless input streams in bounded memory. What it pulls waits in the
//! parent; the scheduler cuts it into tasks only as workers are about to
//! need them, so dropping the iterator early leaves running only what the
//! workers already hold (see [`crate::scheduler`]).
//!
//! # An input that panics
//!
//! The input iterator runs in the caller's thread, under `catch_unwind`.
//! If it panics while producing item `k`, the results of the items before
//! the chunk being assembled are delivered (for `imap`, in order), then
//! one [`Error::InputPanicked`] naming item `k` and the message, then the
//! iterator ends, and every later `next()` returns `None` at once. The items
//! of that unfinished chunk are not run, as in Python (10 items failing at
//! item 3 with chunksize 1 give 3 results; 20 items failing at 7 with
//! chunksize 2 give 6, with chunksize 4 give 4).

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Poll;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Shipped, shipping};
use crate::error::{Error, Result};
use crate::mailbox::{Empty, Mailbox, Postman, mailbox};
use crate::pool::Pool;
use crate::scheduler::{Chunking, Completion, JobId, JobSpec};
use crate::task::{Call, Items, decode_outcomes};
use crate::worker::panic_message;

/// Most tasks outstanding per worker process.
const MAX_TASKS_PER_WORKER: usize = 1024;
/// Most bytes of encoded input outstanding (beyond two tasks per worker).
const MAX_BYTES: usize = 64 << 20;

/// Pulls the next item of `input` (whose index would be `index`), turning
/// a panic into [`Error::InputPanicked`]. After an error, do not call it
/// again on the same iterator.
pub(crate) fn pull<I: Iterator>(input: &mut I, index: usize) -> Result<Option<I::Item>> {
    catch_unwind(AssertUnwindSafe(|| input.next())).map_err(|payload| Error::InputPanicked {
        item: index,
        message: panic_message(payload.as_ref()),
    })
}

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result`
/// per input item.
///
/// An item whose task failed yields its error and the iteration goes on.
/// If the input iterator panics, the results before it come first, then
/// [`Error::InputPanicked`], then the end (see the module docs). Dropping
/// the iterator early cancels the work not yet handed to a worker.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// let squares: Vec<u64> = pool
///     .imap(|x: u64| x * x, 0..1000u64, 16)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(squares[999], 999 * 999);
/// # Ok(()) }
/// ```
///
/// An input that panics part-way:
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// let input = (0..10u32).map(|i| if i == 3 { panic!("bad row") } else { i });
/// let got: Vec<_> = pool.imap(|x: u32| x + 1, input, 1).collect();
/// assert_eq!(got.len(), 4);
/// assert_eq!(got[..3].iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
/// assert!(matches!(&got[3], Err(forkpool::Error::InputPanicked { item: 3, .. })));
/// # Ok(()) }
/// ```
#[must_use = "iterators are lazy: nothing runs until the IMap is iterated"]
pub struct IMap<'p, T, R, I: Iterator<Item = T>> {
    pool: &'p Pool,
    /// The trampoline and function that run each item (a `fn(T) -> R`).
    call: Call,
    types: PhantomData<fn(T) -> R>,
    input: I,
    chunksize: usize,
    ordered: bool,
    rx: Mailbox,
    /// Until the job is opened: its sender.
    tx: Option<Postman>,
    job: Option<JobId>,
    /// Index of the next item to pull.
    next_item: usize,
    /// No more input will be pulled (it ended, panicked, or the pool
    /// refused more).
    input_done: bool,
    /// The input's panic, yielded once everything before it was.
    failure: Option<Error>,
    /// Items handed to the pool and not yet completed, and their bytes.
    outstanding: usize,
    outstanding_bytes: usize,
    /// Items completed so far: the outstanding limit is twice this (slow
    /// start), within bounds.
    completed: usize,
    /// Ordered: finished items waiting for their turn, by first index.
    waiting: BTreeMap<usize, VecDeque<Result<R>>>,
    /// Ordered: the index of the next item to yield.
    next_yield: usize,
    /// Items ready to yield.
    current: VecDeque<Result<R>>,
    /// The contexts the items handed over carry, kept open for their tasks.
    shipped: Shipped,
}

impl<'p, T, R, I> IMap<'p, T, R, I>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
    I: Iterator<Item = T>,
{
    pub(crate) fn new(
        pool: &'p Pool,
        call: Call,
        input: I,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        let (tx, rx) = mailbox();
        let chunksize = chunksize.max(1);
        IMap {
            pool,
            call,
            types: PhantomData,
            input,
            chunksize,
            ordered,
            rx,
            tx: Some(tx),
            job: None,
            next_item: 0,
            input_done: false,
            failure: None,
            outstanding: 0,
            outstanding_bytes: 0,
            completed: 0,
            waiting: BTreeMap::new(),
            next_yield: 0,
            current: VecDeque::new(),
            shipped: Shipped::default(),
        }
    }

    fn max_items(&self) -> usize {
        self.pool.processes() * MAX_TASKS_PER_WORKER * self.chunksize
    }

    /// Pulls input until the limit of outstanding items is reached (in
    /// whole chunks), and hands it to the pool in one block. The limit is
    /// twice the items completed so far (so it doubles per round trip, like
    /// the scheduler's window), at least two chunks per worker and at most
    /// [`MAX_TASKS_PER_WORKER`] chunks per worker. Refills only once half
    /// the room is free, so hand-overs go in batches.
    fn refill(&mut self) {
        let ((), shipped) = shipping(|| self.refill_now());
        self.shipped.absorb(shipped);
    }

    /// [`refill`](Self::refill), without keeping the contexts the items
    /// carry.
    fn refill_now(&mut self) {
        let min_items = 2 * self.pool.processes() * self.chunksize;
        let limit = (2 * self.completed).clamp(min_items, self.max_items().max(min_items));
        if self.input_done
            || (self.outstanding > limit / 2 && self.outstanding_bytes < MAX_BYTES / 2)
        {
            return;
        }
        let mut block = Items::starting_at(self.next_item);
        while !self.input_done
            && self.outstanding + block.len() < limit
            && (self.outstanding_bytes + block.bytes() < MAX_BYTES
                || self.outstanding + block.len() < min_items)
        {
            let start = self.next_item;
            let mut encode_error = None;
            for _ in 0..self.chunksize {
                match pull(&mut self.input, self.next_item) {
                    Ok(Some(item)) => {
                        if encode_error.is_none()
                            && let Err(e) = block.push(&item, self.next_item)
                        {
                            encode_error = Some(e);
                        }
                        self.next_item += 1;
                    }
                    Ok(None) => {
                        self.input_done = true;
                        break;
                    }
                    Err(e) => {
                        // The unfinished chunk is not run (as in Python).
                        self.input_done = true;
                        self.failure = Some(e);
                        self.next_item = start;
                        break;
                    }
                }
            }
            let in_block = start - block.first_index();
            if self.failure.is_some() {
                block.truncate(in_block);
            } else if let Some(e) = encode_error {
                // Not sent: the chunk fails here, in its place, and the
                // items before it go as one block.
                block.truncate(in_block);
                let before = std::mem::replace(&mut block, Items::starting_at(self.next_item));
                self.hand_over(before, false);
                self.finished(
                    start,
                    (start..self.next_item)
                        .map(|i| Err(e.for_item(i)))
                        .collect(),
                );
            }
        }
        self.hand_over(block, self.input_done);
    }

    /// Gives a block of items to the pool (`done` if the input ended). If
    /// the pool refuses, each of its items gets the error, and no more
    /// input is read.
    fn hand_over(&mut self, block: Items, done: bool) {
        if block.len() == 0 && (!done || self.job.is_none()) {
            return;
        }
        let (first, len, bytes) = (block.first_index(), block.len(), block.bytes());
        let submitted = match (self.job, self.tx.take()) {
            (Some(job), _) => Ok(job),
            (None, Some(sink)) => self.pool.open_job(JobSpec {
                header: self.call.header(),
                chunking: Chunking::Fixed(self.chunksize),
                sink,
            }),
            (None, None) => Err(Error::Terminated),
        }
        .and_then(|job| {
            self.job = Some(job);
            self.pool.append(job, block, done)
        });
        match submitted {
            Ok(()) => {
                self.outstanding += len;
                self.outstanding_bytes += bytes;
            }
            Err(e) => {
                self.input_done = true;
                self.finished(first, (0..len).map(|_| Err(e.clone())).collect());
            }
        }
    }

    /// Items are known from `first` on: queue them for yielding.
    fn finished(&mut self, first: usize, items: VecDeque<Result<R>>) {
        if items.is_empty() {
            return;
        }
        if self.ordered {
            self.waiting.insert(first, items);
        } else {
            self.current.extend(items);
        }
    }

    fn accept(&mut self, c: Completion) {
        let meta = c.meta;
        self.outstanding -= meta.items;
        self.outstanding_bytes -= meta.bytes;
        self.completed += meta.items;
        // Unordered, or the next in order: straight to the items ready.
        let now = !self.ordered || meta.first == self.next_yield;
        let mut later = VecDeque::new();
        let items = if now { &mut self.current } else { &mut later };
        match c.outcome {
            Ok(result) => decode_outcomes::<R>(
                result,
                meta.items,
                meta.first,
                &c.parts,
                c.pid,
                std::any::type_name::<T>(),
                |r| items.push_back(r),
            ),
            Err(e) => {
                items.extend((meta.first..meta.first + meta.items).map(|i| Err(e.for_item(i))))
            }
        }
        if now {
            if self.ordered {
                self.next_yield += meta.items;
            }
        } else {
            self.finished(meta.first, later);
        }
    }
}

impl<T, R, I> Iterator for IMap<'_, T, R, I>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
    I: Iterator<Item = T>,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        match self.advance(|rx| Poll::Ready(rx.recv(None))) {
            Poll::Ready(item) => item,
            Poll::Pending => unreachable!("a blocking receive is always ready"),
        }
    }
}

impl<T, R, I> IMap<'_, T, R, I>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
    I: Iterator<Item = T>,
{
    /// The next item, taking completions with `recv`: blocking for the
    /// iterator, polling for the stream.
    fn advance(
        &mut self,
        mut recv: impl FnMut(&mut Mailbox) -> Poll<std::result::Result<Completion, Empty>>,
    ) -> Poll<Option<Result<R>>> {
        loop {
            if let Some(item) = self.current.pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.ordered
                && let Some(items) = self.waiting.remove(&self.next_yield)
            {
                self.next_yield += items.len();
                self.current = items;
                continue;
            }
            self.refill();
            if !self.current.is_empty() || self.waiting.contains_key(&self.next_yield) {
                continue;
            }
            if self.outstanding == 0 {
                // Everything before the input's panic was yielded.
                return Poll::Ready(self.failure.take().map(Err));
            }
            match std::task::ready!(recv(&mut self.rx)) {
                Ok(c) => self.accept(c),
                // Every sender is gone with items outstanding: only a pool
                // shut down under us does that. End rather than wait.
                Err(_) => {
                    self.outstanding = 0;
                    self.input_done = true;
                    return Poll::Ready(Some(Err(Error::Terminated)));
                }
            }
        }
    }
}

/// With the feature `futures`: the results as a [`futures_core::Stream`],
/// for async code under any executor (the collector thread wakes the task
/// when results arrive). The input is pulled, and items encoded, in
/// `poll_next`.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// use std::pin::Pin;
///
/// let pool = forkpool::Pool::new(2)?;
/// let mut squares = pool.imap(|x: u64| x * x, 0..10u64, 2);
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let total = rt.block_on(async {
///     let mut total = 0;
///     while let Some(sq) =
///         std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut squares), cx)).await
///     {
///         total += sq?;
///     }
///     Ok::<_, forkpool::Error>(total)
/// })?;
/// assert_eq!(total, 285);
/// # Ok(()) }
/// ```
#[cfg(feature = "futures")]
impl<T, R, I> futures_core::Stream for IMap<'_, T, R, I>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned + Unpin,
    I: Iterator<Item = T> + Unpin,
{
    type Item = Result<R>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<R>>> {
        self.get_mut().advance(|rx| rx.poll_recv(cx))
    }
}

impl<T, R, I: Iterator<Item = T>> Drop for IMap<'_, T, R, I> {
    fn drop(&mut self) {
        if let Some(job) = self.job {
            self.pool.cancel_job(job);
        }
    }
}
