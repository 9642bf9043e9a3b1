//! Where completions go: one mailbox per job, filled by the collector,
//! emptied by the thread that submitted the job.
//!
//! A mutex, a queue and a condition variable. A general-purpose channel
//! (crossbeam's) spins and calls `sched_yield` before it sleeps; with the
//! caller, the collector and the workers sharing two cores, that spinning
//! took the CPU the worker needed and made `apply`'s round trip three times
//! slower. A waiting receiver here sleeps at once and is woken by one futex
//! call.
//!
//! Completions travel in batches: the collector posts every completion of
//! one job that one wake-up produced under one lock and one notify, and the
//! receiver takes everything waiting in one go into a queue of its own. At
//! chunksize 1 the per-completion lock, notify and wake-up were a large
//! part of the parent's cost per task (see `benches/RESULTS.md`, scheduling).
//!
//! The receiver learns when every sender is gone without sending what it
//! waits for (a pool shut down under it), so no wait here is endless.
//!
//! An async receiver (an [`AsyncResult`](crate::AsyncResult) awaited under
//! any executor) leaves a [`Waker`] instead of sleeping: every delivery, and
//! the last sender going away, wakes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::scheduler::Completion;

struct Inner {
    state: Mutex<State>,
    ready: Condvar,
    /// The submitter no longer wants the job's tasks run (see
    /// [`CancelFlag`]).
    cancelled: AtomicBool,
}

struct State {
    /// The oldest completion waiting, when it came alone: a job of one
    /// task (an `apply`) is delivered without allocating a queue.
    one: Option<Completion>,
    /// The completions waiting after `one`.
    queue: VecDeque<Completion>,
    senders: usize,
    /// The task of an async receiver waiting for the next delivery.
    waker: Option<Waker>,
}

/// The sending side: cloned into every task of the job.
pub(crate) struct Postman {
    inner: Arc<Inner>,
    /// It still counts among the mailbox's senders (until
    /// [`send_all`](Self::send_all) or its drop).
    counted: bool,
}

/// The receiving side, kept by the job's handle.
pub(crate) struct Mailbox {
    inner: Arc<Inner>,
    /// Completions taken from the shared queue, not yet handed out.
    taken: VecDeque<Completion>,
}

/// Cancels the job a mailbox belongs to: the scheduler reads the flag
/// through the job's [`Postman`] and cuts no more of its tasks. Not a
/// sender: holding one does not keep the receiver waiting.
pub(crate) struct CancelFlag(Arc<Inner>);

impl CancelFlag {
    pub(crate) fn set(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Why a receive returned without a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Empty {
    /// The deadline passed.
    Timeout,
    /// Every sender is gone: nothing more will come.
    Disconnected,
}

/// A new mailbox and its first sender.
pub(crate) fn mailbox() -> (Postman, Mailbox) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            one: None,
            queue: VecDeque::new(),
            senders: 1,
            waker: None,
        }),
        ready: Condvar::new(),
        cancelled: AtomicBool::new(false),
    });
    (
        Postman {
            inner: inner.clone(),
            counted: true,
        },
        Mailbox {
            inner,
            taken: VecDeque::new(),
        },
    )
}

impl Postman {
    /// Delivers completions, in order, and stops counting as a sender,
    /// with one lock and one wake-up (never blocks). (Delivering, then
    /// dropping, took the mailbox's lock twice for each `apply`.)
    pub(crate) fn send_all(mut self, batch: impl IntoIterator<Item = Completion>) {
        let mut st = self.inner.state.lock();
        for c in batch {
            if st.one.is_none() && st.queue.is_empty() {
                st.one = Some(c);
            } else {
                st.queue.push_back(c);
            }
        }
        st.senders -= 1;
        self.counted = false;
        let last = st.senders == 0;
        let waker = st.waker.take();
        drop(st);
        if last {
            self.inner.ready.notify_all();
        } else {
            self.inner.ready.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the job was cancelled (see [`CancelFlag`]).
    pub(crate) fn cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Cancels the job.
    pub(crate) fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Relaxed);
    }
}

impl Clone for Postman {
    fn clone(&self) -> Self {
        self.inner.state.lock().senders += 1;
        Postman {
            inner: self.inner.clone(),
            counted: true,
        }
    }
}

impl Drop for Postman {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut st = self.inner.state.lock();
        st.senders -= 1;
        if st.senders == 0 {
            let waker = st.waker.take();
            drop(st);
            self.inner.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl std::fmt::Debug for Postman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postman")
    }
}

impl Mailbox {
    /// What cancels its job.
    pub(crate) fn cancel_flag(&self) -> CancelFlag {
        CancelFlag(self.inner.clone())
    }

    /// Waits for the next completion, until `deadline` if given.
    pub(crate) fn recv(&mut self, deadline: Option<Instant>) -> Result<Completion, Empty> {
        if let Some(c) = self.taken.pop_front() {
            return Ok(c);
        }
        let mut st = self.inner.state.lock();
        loop {
            if let Some(c) = st.one.take() {
                return Ok(c);
            }
            if !st.queue.is_empty() {
                std::mem::swap(&mut st.queue, &mut self.taken);
                return Ok(self.taken.pop_front().expect("just swapped in"));
            }
            if st.senders == 0 {
                return Err(Empty::Disconnected);
            }
            match deadline {
                Some(d) => {
                    if self.inner.ready.wait_until(&mut st, d).timed_out()
                        && st.one.is_none()
                        && st.queue.is_empty()
                    {
                        return Err(Empty::Timeout);
                    }
                }
                None => self.inner.ready.wait(&mut st),
            }
        }
    }

    /// Takes the next completion without blocking; when there is none,
    /// leaves `cx`'s waker to be woken by the next delivery (or by the last
    /// sender going away).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Completion, Empty>> {
        if let Some(c) = self.taken.pop_front() {
            return Poll::Ready(Ok(c));
        }
        let mut st = self.inner.state.lock();
        if let Some(c) = st.one.take() {
            return Poll::Ready(Ok(c));
        }
        if !st.queue.is_empty() {
            std::mem::swap(&mut st.queue, &mut self.taken);
            return Poll::Ready(Ok(self.taken.pop_front().expect("just swapped in")));
        }
        if st.senders == 0 {
            return Poll::Ready(Err(Empty::Disconnected));
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// How many items the waiting completions cover.
    pub(crate) fn items(&self) -> usize {
        let st = self.inner.state.lock();
        let shared: usize = st.one.iter().chain(&st.queue).map(|c| c.meta.items).sum();
        shared + self.taken.iter().map(|c| c.meta.items).sum::<usize>()
    }
}
