//! Handles to work submitted with `apply_async` and `map_async`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::collector::Shared;
use crate::context::Shipped;
use crate::error::{Error, Result};
use crate::mailbox::{CancelFlag, Empty, Mailbox};
use crate::scheduler::Completion;
use crate::task::decode_outcomes;

/// Gathers the completions of one job into its final value.
pub(crate) trait Sink<O>: Send {
    fn take(&mut self, c: Completion);
    fn finish(self: Box<Self>) -> Result<O>;
}

/// The results of a `map`, decoded straight into the output while tasks
/// complete in order (tasks are cut in item order, so by task index);
/// tasks that complete ahead of a gap wait aside. After an error only the
/// lowest item's error is kept.
pub(crate) struct MapSink<R> {
    /// The values of every task before `next_chunk`, in order.
    out: Vec<R>,
    next_chunk: usize,
    /// Tasks completed ahead of `next_chunk`: by first task, the tasks
    /// covered and their values.
    ahead: BTreeMap<usize, (usize, Vec<R>)>,
    /// Items in the job: `out`'s capacity, reserved when the first task
    /// completes (see [`take`](Sink::take)).
    items: usize,
    first_error: Option<Error>,
    arg_type: &'static str,
}

impl<R> MapSink<R> {
    /// A sink for `items` results.
    pub(crate) fn new(arg_type: &'static str, items: usize) -> Self {
        MapSink {
            out: Vec::new(),
            next_chunk: 0,
            ahead: BTreeMap::new(),
            items,
            first_error: None,
            arg_type,
        }
    }

    fn note(&mut self, e: Error) {
        let lower = match (&self.first_error, e.item()) {
            (None, _) => true,
            (Some(old), Some(i)) => old.item().is_none_or(|o| i < o),
            (Some(_), None) => false,
        };
        if lower {
            self.first_error = Some(e);
        }
        // The map fails: no value will be returned.
        self.out = Vec::new();
        self.ahead.clear();
    }
}

impl<R: DeserializeOwned + Send> Sink<Vec<R>> for MapSink<R> {
    fn take(&mut self, c: Completion) {
        let (meta, tasks) = (c.meta, c.tasks());
        let body = match c.outcome {
            Ok(body) => body,
            Err(e) => return self.note(e),
        };
        if self.out.capacity() == 0 && self.first_error.is_none() {
            // Only now: results are taken after the job was submitted,
            // when the collected input and its blocks have been freed, so
            // the output can reuse their memory. Reserved up front, it
            // took pages fresh from the system on every map (glibc's malloc
            // gives a freed 8 MB back when two such are free together):
            // about 5 000 page faults per `map` of 1 M `u64`, 900 now.
            self.out.reserve_exact(self.items);
        }
        let in_order = meta.chunk == self.next_chunk && self.first_error.is_none();
        let mut ahead = match in_order {
            true => Vec::new(),
            false => Vec::with_capacity(meta.items),
        };
        let values = if in_order { &mut self.out } else { &mut ahead };
        let mark = values.len();
        let mut err = None;
        decode_outcomes::<R>(
            body,
            meta.items,
            meta.first,
            &c.parts,
            c.pid,
            self.arg_type,
            |r| match r {
                Ok(v) if err.is_none() => values.push(v),
                Ok(_) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            },
        );
        if let Some(e) = err {
            values.truncate(mark);
            return self.note(e);
        }
        if self.first_error.is_some() {
            return;
        }
        if !in_order {
            self.ahead.insert(meta.chunk, (tasks, ahead));
            return;
        }
        self.next_chunk += tasks;
        while let Some(entry) = self.ahead.first_entry()
            && *entry.key() == self.next_chunk
        {
            let (tasks, values) = entry.remove();
            self.out.extend(values);
            self.next_chunk += tasks;
        }
    }

    fn finish(self: Box<Self>) -> Result<Vec<R>> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        assert!(self.ahead.is_empty(), "every task completed");
        Ok(self.out)
    }
}

/// The result of an `apply`: one task of one item.
pub(crate) struct ApplySink<R> {
    value: Option<Result<R>>,
    arg_type: &'static str,
}

impl<R> ApplySink<R> {
    pub(crate) fn new(arg_type: &'static str) -> Self {
        ApplySink {
            value: None,
            arg_type,
        }
    }
}

impl<R: DeserializeOwned + Send> Sink<R> for ApplySink<R> {
    fn take(&mut self, c: Completion) {
        let meta = c.meta;
        self.value = Some(match c.outcome {
            Ok(body) => {
                let mut value = None;
                decode_outcomes::<R>(
                    body,
                    meta.items,
                    meta.first,
                    &c.parts,
                    c.pid,
                    self.arg_type,
                    |r| value = Some(r),
                );
                value.expect("one outcome per item")
            }
            Err(e) => Err(e),
        });
    }

    fn finish(self: Box<Self>) -> Result<R> {
        self.value.expect("the task completed")
    }
}

/// A result that will arrive: returned by
/// [`Pool::apply_async`](crate::Pool::apply_async),
/// [`Pool::map_async`](crate::Pool::map_async) and
/// [`Pool::starmap_async`](crate::Pool::starmap_async), like Python's
/// `AsyncResult`.
///
/// Wait for it with [`get`](Self::get) or [`get_timeout`](Self::get_timeout),
/// or `.await` it: `AsyncResult` is a [`Future`] whose output is the same
/// `Result` that `get` returns. It needs no particular runtime (tokio,
/// async-std, smol, a hand-written executor): the pool's collector thread
/// wakes the task when the last result arrives.
///
/// # Cancelling
///
/// [`cancel`](Self::cancel) drops the job's tasks that no worker has taken
/// yet, and [`get`](Self::get) then returns [`Error::Cancelled`] at once.
/// **Dropping an unfinished handle cancels it too**, as dropping a Rust
/// future does: work nobody waits for does not hold the pool. Tasks a
/// worker already holds run to the end (or to the pool's
/// [`task_timeout`](crate::PoolBuilder::task_timeout)); their results are
/// discarded. To submit work and not wait for it (Python's `apply_async`
/// without keeping the result, then `close(); join()`), call
/// [`detach`](Self::detach).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// use std::time::Duration;
///
/// let pool = forkpool::Pool::new(2)?;
/// let mut h = pool.apply_async(|x: u64| x + 1, 41);
/// let answer = h.get_timeout(Duration::from_secs(10))?;
/// assert_eq!(answer, 42);
/// # Ok(()) }
/// ```
///
/// In an async function, under any executor:
///
/// ```
/// async fn squares(pool: &forkpool::Pool) -> Result<u64, forkpool::Error> {
///     let a = pool.apply_async(|x: u64| x * x, 3);
///     let b = pool.map_async(|x: u64| x * x, 0..4);
///     Ok(a.await? + b.await?.iter().sum::<u64>())
/// }
/// # fn main() -> Result<(), forkpool::Error> {
/// # let pool = forkpool::Pool::new(2)?;
/// # let fut = std::pin::pin!(squares(&pool));
/// # let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// # let mut fut = fut;
/// # let out = loop {
/// #     if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) { break r; }
/// #     std::thread::sleep(std::time::Duration::from_millis(1));
/// # };
/// # assert_eq!(out?, 9 + 14);
/// # Ok(()) }
/// ```
pub struct AsyncResult<O> {
    state: Inner<O>,
    /// What must live until the result is in: the contexts its items
    /// refer to.
    _keep: Option<Shipped>,
}

enum Inner<O> {
    Waiting(Waiting<O>),
    /// Submission failed, or the result was taken.
    Failed(Error),
    Taken,
}

struct Waiting<O> {
    rx: Mailbox,
    /// Items whose completion has not been received.
    pending: usize,
    /// Items of the job.
    items: usize,
    /// Drops the job's queued tasks; `None` once detached.
    cancel: Option<Canceller>,
    sink: Box<dyn Sink<O>>,
    /// Moves one step per item whose result arrived.
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl<O> Waiting<O> {
    fn accept(&mut self, c: Completion) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.inc(c.meta.items as u64);
        }
        self.pending = self.pending.saturating_sub(c.meta.items);
        self.sink.take(c);
    }
}

/// Cancels a job: sets the flag its queued tasks carry (the scheduler drops
/// flagged tasks instead of handing them out) and wakes the collector so it
/// does so now.
pub(crate) struct Canceller {
    flag: CancelFlag,
    /// Weak: a handle kept after its pool is gone must not keep the pool's
    /// descriptors open.
    shared: Weak<Shared>,
}

impl Canceller {
    pub(crate) fn new(flag: CancelFlag, shared: &Arc<Shared>) -> Self {
        Canceller {
            flag,
            shared: Arc::downgrade(shared),
        }
    }

    pub(crate) fn cancel(&self) {
        self.flag.set();
        if let Some(shared) = self.shared.upgrade() {
            shared.wake();
        }
    }
}

impl<O> AsyncResult<O> {
    pub(crate) fn new(
        rx: Mailbox,
        pending: usize,
        sink: Box<dyn Sink<O>>,
        cancel: Option<Canceller>,
    ) -> Self {
        AsyncResult {
            _keep: None,
            state: Inner::Waiting(Waiting {
                rx,
                pending,
                items: pending,
                cancel,
                sink,
                #[cfg(feature = "progress")]
                bar: None,
            }),
        }
    }

    pub(crate) fn failed(e: Error) -> Self {
        AsyncResult {
            state: Inner::Failed(e),
            _keep: None,
        }
    }

    /// Waits for the result.
    ///
    /// # Errors
    ///
    /// The first error among the items (lowest item index) for a map, the
    /// task's error for an apply, or why the work could not be submitted
    /// ([`Error::Closed`], [`Error::Terminated`], ...).
    pub fn get(mut self) -> Result<O> {
        self.wait_until(None)
    }

    /// Waits at most `timeout` for the result. On [`Error::Timeout`] the
    /// handle stays usable: ask again later.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus [`Error::Timeout`] and, after the result
    /// was taken, [`Error::AlreadyTaken`].
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<O> {
        self.wait_until(Some((Instant::now() + timeout, timeout)))
    }

    /// Whether the result has arrived (so [`get`](Self::get) will not
    /// block).
    pub fn ready(&self) -> bool {
        match &self.state {
            Inner::Waiting(w) => w.rx.items() >= w.pending,
            Inner::Failed(_) | Inner::Taken => true,
        }
    }

    fn wait_until(&mut self, deadline: Option<(Instant, Duration)>) -> Result<O> {
        if let Inner::Waiting(w) = &mut self.state {
            while w.pending > 0 {
                match w.rx.recv(deadline.map(|(d, _)| d)) {
                    Ok(c) => w.accept(c),
                    Err(Empty::Timeout) => {
                        let waited = deadline.map(|(_, w)| w).unwrap_or_default();
                        return Err(Error::Timeout { waited });
                    }
                    Err(Empty::Disconnected) => {
                        self.disconnected();
                        break;
                    }
                }
            }
        }
        self.take()
    }

    /// Cancels the work: its tasks that no worker holds yet are dropped
    /// without running, and [`get`](Self::get) (or `.await`) returns
    /// [`Error::Cancelled`] at once. Tasks a worker already holds finish
    /// (or hit the pool's [`task_timeout`](crate::PoolBuilder::task_timeout))
    /// and their results are discarded. Like
    /// `concurrent.futures.Future.cancel`, returns whether it cancelled
    /// anything: `false` if every result had already arrived (then `get`
    /// returns them) or the work had already failed.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn slow(ms: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    /// let pool = forkpool::Pool::new(1)?;
    /// let mut h = pool.map_async(slow, vec![50; 100]);
    /// assert!(h.cancel());
    /// assert!(matches!(h.get(), Err(forkpool::Error::Cancelled { .. })));
    /// assert_eq!(pool.apply(slow, 1)?, 1); // the pool is free at once
    /// # Ok(()) }
    /// ```
    pub fn cancel(&mut self) -> bool {
        let Inner::Waiting(w) = &mut self.state else {
            return false;
        };
        while let Ok(c) = w.rx.recv(Some(Instant::now())) {
            w.accept(c);
        }
        if w.pending == 0 {
            return false;
        }
        if let Some(c) = w.cancel.take() {
            c.cancel();
        }
        #[cfg(feature = "progress")]
        if let Some(bar) = &w.bar {
            bar.abandon();
        }
        let err = Error::Cancelled {
            completed: w.items - w.pending,
            items: w.items,
        };
        self.state = Inner::Failed(err);
        true
    }

    /// Lets the work run to the end without this handle: nobody gets the
    /// result, and dropping does not cancel it (the behaviour of Python's
    /// `apply_async` whose result is not kept).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// fn touch(path: String) {
    ///     std::fs::write(path, b"done").unwrap();
    /// }
    /// let dir = std::env::temp_dir().join(format!("forkpool-detach-{}", std::process::id()));
    /// let path = dir.to_str().unwrap().to_string();
    /// let pool = forkpool::Pool::new(1)?;
    /// pool.apply_async(touch, path.clone()).detach();
    /// pool.close();
    /// pool.join()?; // the detached task ran before the workers exited
    /// assert_eq!(std::fs::read(&path).unwrap(), b"done");
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn detach(mut self) {
        if let Inner::Waiting(w) = &mut self.state {
            w.cancel = None;
        }
    }

    /// Moves `bar` as results arrive, and finishes it with the result.
    #[cfg(feature = "progress")]
    pub(crate) fn with_bar(mut self, bar: indicatif::ProgressBar) -> Self {
        match &mut self.state {
            Inner::Waiting(w) => w.bar = Some(bar),
            Inner::Failed(_) | Inner::Taken => bar.abandon(),
        }
        self
    }

    /// Keeps the memory files of the contexts the job's items refer to
    /// open as long as this handle.
    pub(crate) fn keep_shipped(mut self, shipped: Shipped) -> Self {
        if !shipped.is_empty() {
            self._keep = Some(shipped);
        }
        self
    }

    /// Every task's sender is gone without completing it: only a pool shut
    /// down under it does that.
    fn disconnected(&mut self) {
        #[cfg(feature = "progress")]
        if let Inner::Waiting(Waiting { bar: Some(bar), .. }) = &self.state {
            bar.abandon();
        }
        self.state = Inner::Failed(Error::Terminated);
    }

    /// The final value, once every completion is in.
    fn take(&mut self) -> Result<O> {
        match std::mem::replace(&mut self.state, Inner::Taken) {
            Inner::Waiting(w) => {
                #[cfg(feature = "progress")]
                if let Some(bar) = &w.bar {
                    bar.finish_using_style();
                }
                w.sink.finish()
            }
            Inner::Failed(e) => Err(e),
            Inner::Taken => Err(Error::AlreadyTaken),
        }
    }
}

/// An unfinished handle cancels its work when dropped (see
/// [`AsyncResult::cancel`]); [`AsyncResult::detach`] lets it run.
impl<O> Drop for AsyncResult<O> {
    fn drop(&mut self) {
        if let Inner::Waiting(w) = &self.state
            && w.pending > 0
            && let Some(c) = &w.cancel
        {
            c.cancel();
        }
    }
}

/// `.await` gives what [`AsyncResult::get`] returns. Polling after the
/// output was returned gives [`Error::AlreadyTaken`].
impl<O> Future for AsyncResult<O> {
    type Output = Result<O>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<O>> {
        let this = self.get_mut();
        if let Inner::Waiting(w) = &mut this.state {
            while w.pending > 0 {
                match w.rx.poll_recv(cx) {
                    Poll::Ready(Ok(c)) => w.accept(c),
                    Poll::Ready(Err(_)) => {
                        this.disconnected();
                        break;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        Poll::Ready(this.take())
    }
}

impl<O> std::fmt::Debug for AsyncResult<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            Inner::Waiting(w) => format!("waiting for {} items", w.pending),
            Inner::Failed(e) => format!("failed: {e}"),
            Inner::Taken => "taken".to_string(),
        };
        f.debug_struct("AsyncResult")
            .field("state", &state)
            .finish()
    }
}
