//! Handles to work submitted with `apply_async` and `map_async`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::mailbox::{Empty, Mailbox};
use crate::scheduler::Completion;
use crate::task::decode_outcomes;

/// Gathers the completions of one job into its final value.
pub(crate) trait Sink<O>: Send {
    fn take(&mut self, c: Completion);
    fn finish(self: Box<Self>) -> Result<O>;
}

/// The results of a `map`: values per task (tasks are cut in item order,
/// so by task index), or the error of the lowest item.
pub(crate) struct MapSink<R> {
    chunks: Vec<Option<Vec<R>>>,
    first_error: Option<Error>,
    arg_type: &'static str,
}

impl<R> MapSink<R> {
    pub(crate) fn new(arg_type: &'static str) -> Self {
        MapSink {
            chunks: Vec::new(),
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
    }
}

impl<R: DeserializeOwned + Send> Sink<Vec<R>> for MapSink<R> {
    fn take(&mut self, c: Completion) {
        let meta = c.meta;
        match c.outcome {
            Ok(body) => {
                let mut values = Vec::with_capacity(meta.items);
                let mut err = None;
                decode_outcomes::<R>(
                    body.payload(),
                    meta.items,
                    meta.first,
                    c.pid,
                    self.arg_type,
                    |r| match r {
                        Ok(v) => values.push(v),
                        Err(e) => {
                            err.get_or_insert(e);
                        }
                    },
                );
                match err {
                    Some(e) => self.note(e),
                    None => {
                        if self.chunks.len() <= meta.chunk {
                            self.chunks.resize_with(meta.chunk + 1, || None);
                        }
                        self.chunks[meta.chunk] = Some(values);
                    }
                }
            }
            Err(e) => self.note(e),
        }
    }

    fn finish(self: Box<Self>) -> Result<Vec<R>> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        let total = self.chunks.iter().flatten().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        for chunk in self.chunks {
            out.extend(chunk.expect("every task completed"));
        }
        Ok(out)
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
                    body.payload(),
                    meta.items,
                    meta.first,
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
/// The work runs whether or not the handle is kept: dropping it only
/// discards the result.
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
    sink: Box<dyn Sink<O>>,
}

impl<O> Waiting<O> {
    fn accept(&mut self, c: Completion) {
        self.pending = self.pending.saturating_sub(c.meta.items);
        self.sink.take(c);
    }
}

impl<O> AsyncResult<O> {
    pub(crate) fn new(rx: Mailbox, pending: usize, sink: Box<dyn Sink<O>>) -> Self {
        AsyncResult {
            state: Inner::Waiting(Waiting { rx, pending, sink }),
        }
    }

    pub(crate) fn failed(e: Error) -> Self {
        AsyncResult {
            state: Inner::Failed(e),
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

    /// Every task's sender is gone without completing it: only a pool shut
    /// down under it does that.
    fn disconnected(&mut self) {
        self.state = Inner::Failed(Error::Terminated);
    }

    /// The final value, once every completion is in.
    fn take(&mut self) -> Result<O> {
        match std::mem::replace(&mut self.state, Inner::Taken) {
            Inner::Waiting(w) => w.sink.finish(),
            Inner::Failed(e) => Err(e),
            Inner::Taken => Err(Error::AlreadyTaken),
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
