//! Lazy maps: [`Pool::imap`](crate::Pool::imap) and
//! [`Pool::imap_unordered`](crate::Pool::imap_unordered).
//!
//! Unlike Python's `imap`, which drains its input into the task queue at
//! once, the iterator pulls input only as results are consumed: at most
//! [`MAX_TASKS_PER_WORKER`] tasks per worker and [`MAX_BYTES`] of encoded
//! input are outstanding, so an endless input streams in bounded memory.

use std::collections::{BTreeMap, VecDeque};
use std::iter::Fuse;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, Postman, mailbox};
use crate::pool::Pool;
use crate::scheduler::{Completion, Task, TaskMeta};
use crate::task::{decode_outcomes, encode_task};

/// Most tasks outstanding per worker process.
const MAX_TASKS_PER_WORKER: usize = 1024;
/// Most bytes of encoded input outstanding (beyond two tasks per worker).
const MAX_BYTES: usize = 64 << 20;

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result`
/// per input item.
///
/// An item whose task failed yields its error and the iteration goes on.
/// Dropping the iterator early cancels the tasks not yet handed to a
/// worker.
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
#[must_use = "iterators are lazy: nothing runs until the IMap is iterated"]
pub struct IMap<'p, T, R, I: Iterator<Item = T>> {
    pool: &'p Pool,
    f: fn(T) -> R,
    input: Fuse<I>,
    chunksize: usize,
    ordered: bool,
    tx: Postman,
    rx: Mailbox,
    cancel: Arc<AtomicBool>,
    /// Index of the next task to submit, and of its first item.
    next_chunk: usize,
    next_item: usize,
    input_done: bool,
    outstanding: usize,
    outstanding_bytes: usize,
    /// Ordered: finished tasks waiting for their turn.
    waiting: BTreeMap<usize, VecDeque<Result<R>>>,
    next_yield: usize,
    /// Items ready to yield.
    current: VecDeque<Result<R>>,
}

impl<'p, T, R, I> IMap<'p, T, R, I>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
    I: Iterator<Item = T>,
{
    pub(crate) fn new(
        pool: &'p Pool,
        f: fn(T) -> R,
        input: I,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        let (tx, rx) = mailbox();
        IMap {
            pool,
            f,
            input: input.fuse(),
            chunksize: chunksize.max(1),
            ordered,
            tx,
            rx,
            cancel: Arc::new(AtomicBool::new(false)),
            next_chunk: 0,
            next_item: 0,
            input_done: false,
            outstanding: 0,
            outstanding_bytes: 0,
            waiting: BTreeMap::new(),
            next_yield: 0,
            current: VecDeque::new(),
        }
    }

    fn max_tasks(&self) -> usize {
        self.pool.processes() * MAX_TASKS_PER_WORKER
    }

    /// Submits input until the outstanding bounds are reached. Refills only
    /// once half the room is free, so submissions go in batches.
    fn refill(&mut self) {
        let max = self.max_tasks();
        let min_tasks = 2 * self.pool.processes();
        if self.input_done || (self.outstanding > max / 2 && self.outstanding_bytes < MAX_BYTES / 2)
        {
            return;
        }
        let mut batch = Vec::new();
        while !self.input_done
            && self.outstanding < max
            && (self.outstanding_bytes < MAX_BYTES || self.outstanding < min_tasks)
        {
            let items: Vec<T> = self.input.by_ref().take(self.chunksize).collect();
            if items.is_empty() {
                self.input_done = true;
                break;
            }
            let (chunk, first, count) = (self.next_chunk, self.next_item, items.len());
            self.next_chunk += 1;
            self.next_item += count;
            match encode_task(self.f, items, first) {
                Ok(frame) => {
                    self.outstanding += 1;
                    self.outstanding_bytes += frame.len();
                    let meta = TaskMeta {
                        chunk,
                        first,
                        items: count,
                        bytes: frame.len(),
                    };
                    batch.push(Task::new(
                        frame,
                        meta,
                        self.tx.clone(),
                        Some(self.cancel.clone()),
                    ));
                }
                // Not sent: the task fails here, in its place.
                Err(e) => self.finished(
                    chunk,
                    (first..first + count).map(|i| Err(e.for_item(i))).collect(),
                ),
            }
        }
        if batch.is_empty() {
            return;
        }
        let sent: Vec<(usize, usize, usize, usize)> = batch
            .iter()
            .map(|t| {
                let m = t.meta();
                (m.chunk, m.first, m.items, m.bytes)
            })
            .collect();
        if let Err(e) = self.pool.submit(batch) {
            // The pool takes nothing more: each item of these tasks gets the
            // error, and no more input is read.
            self.input_done = true;
            for (chunk, first, count, bytes) in sent {
                self.outstanding -= 1;
                self.outstanding_bytes -= bytes;
                self.finished(
                    chunk,
                    (first..first + count).map(|_| Err(e.clone())).collect(),
                );
            }
        }
    }

    /// A task's items are known: queue them for yielding.
    fn finished(&mut self, chunk: usize, items: VecDeque<Result<R>>) {
        if self.ordered {
            self.waiting.insert(chunk, items);
        } else {
            self.current.extend(items);
        }
    }

    fn accept(&mut self, c: Completion) {
        self.outstanding -= 1;
        self.outstanding_bytes -= c.meta.bytes;
        let meta = c.meta;
        let mut items = VecDeque::with_capacity(meta.items);
        match c.outcome {
            Ok(body) => decode_outcomes::<R>(
                body.payload(),
                meta.items,
                meta.first,
                c.pid,
                std::any::type_name::<T>(),
                |r| items.push_back(r),
            ),
            Err(e) => {
                items.extend((meta.first..meta.first + meta.items).map(|i| Err(e.for_item(i))))
            }
        }
        self.finished(meta.chunk, items);
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
        loop {
            if let Some(item) = self.current.pop_front() {
                return Some(item);
            }
            if self.ordered
                && let Some(items) = self.waiting.remove(&self.next_yield)
            {
                self.next_yield += 1;
                self.current = items;
                continue;
            }
            self.refill();
            if !self.current.is_empty() || self.waiting.contains_key(&self.next_yield) {
                continue;
            }
            if self.outstanding == 0 {
                return None;
            }
            match self.rx.recv(None) {
                Ok(c) => self.accept(c),
                // Unreachable while `self.tx` lives; kept for clarity.
                Err(_) => return Some(Err(Error::Terminated)),
            }
        }
    }
}

impl<T, R, I: Iterator<Item = T>> Drop for IMap<'_, T, R, I> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
