//! The worker process: runs the initializer once, then tasks, until its task
//! pipe reports EOF (the pool retired it, or the parent is gone).
//!
//! Results are buffered and written when no further complete task is
//! waiting in the read buffer (so a burst of small tasks costs one `write`),
//! or when the oldest buffered result's task started [`MAX_HOLD`] ago (so
//! a long task's result is not held back behind the next task).
//!
//! # No lock of the parent's after the fork
//!
//! A worker is a fork of the zygote, itself a fork of a possibly threaded
//! parent: any lock another thread of the parent held at the zygote's fork
//! is held forever here. So nothing between the fork and the end of a
//! worker takes a process-global lock of std's or the program's: no
//! printing (stdout/stderr locks), no `std::env`, and no change to the
//! panic hook. The hook that captures panics is installed in the parent,
//! before the zygote is forked ([`install_panic_hook`]); the worker only
//! switches a thread-local flag on, and the captured message travels in a
//! lock-free slot. What remains is what Rust's panic machinery itself does
//! when a task panics: it *reads* the hook (a reader another thread left
//! behind does not block it; a thread that was inside `set_hook` or
//! `take_hook` at the instant of the fork would) and unwinds (the unwinder
//! finds its tables through glibc's lock-free `_dl_find_object`, glibc 2.35
//! and later with libgcc 12 and later). Allocation is safe: glibc's
//! `malloc` has fork handlers.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use crate::frame::{self, Body, Fill, FrameReader, FromWorker, ResultFrame, TaskHeader};
use crate::task::Trampoline;

/// The initializer as the zygote keeps it.
pub(crate) type Initializer = Box<dyn FnMut() -> Result<(), String>>;

/// Exit status of a worker that received a task stream it cannot parse.
pub(crate) const EXIT_BAD_FRAME: i32 = 70;
/// Exit status of a worker whose initializer failed (after reporting it).
pub(crate) const EXIT_INIT_FAILED: i32 = 71;

/// Longest time a finished result waits in the buffer for company.
const MAX_HOLD: Duration = Duration::from_micros(200);
/// Buffered results are written once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

thread_local! {
    /// Whether panics on this thread are captured for the parent rather than
    /// printed: set on a worker's main thread only. (A `const` cell without
    /// drop glue: using it registers no destructor and takes no lock.)
    static CAPTURE: Cell<bool> = const { Cell::new(false) };
}

/// The last captured panic (message and location), boxed, or null. Only a
/// worker's main thread ever sets or takes it, so it needs no lock: the
/// parent never touches it, and a fork never copies it mid-update.
static LAST_PANIC: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());

/// Installs, once per process, the panic hook workers use, and does so in
/// the parent, before the first zygote is forked.
///
/// The hook records a panic's message and location for the parent instead
/// of printing them, on a worker's main thread only; everywhere else it
/// calls the hook it replaced. Installing it takes std's panic-hook lock
/// (for writing), which is why it happens here, in the parent: a process
/// forked while another thread runs a hook (any caught panic does) keeps
/// that reader forever, so a worker that called `take_hook` or `set_hook`
/// would block for good. Workers only *read* the lock when they panic,
/// which a leftover reader does not prevent.
///
/// Not installed from a thread that is panicking (std refuses to change
/// the hook there): workers then fall back on the panic payload and lose
/// the location. A program that replaces the hook later without chaining
/// to the previous one turns the capture off for pools built afterwards
/// (their workers print panics the way that hook does).
pub(crate) fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    if std::thread::panicking() {
        return;
    }
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURE.get() {
                let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
                let text = match info.location() {
                    Some(l) => format!("{message} (at {}:{}:{})", l.file(), l.line(), l.column()),
                    None => message.to_string(),
                };
                let old = LAST_PANIC.swap(Box::into_raw(Box::new(text)), Ordering::AcqRel);
                if !old.is_null() {
                    // SAFETY: every non-null pointer stored in LAST_PANIC came
                    // from `Box::into_raw`, and the swap made us its only owner.
                    drop(unsafe { Box::from_raw(old) });
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// The message of a caught panic: what the hook recorded (in a worker), or
/// the payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if CAPTURE.get() {
        let recorded = LAST_PANIC.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !recorded.is_null() {
            // SAFETY: a non-null pointer in LAST_PANIC came from
            // `Box::into_raw`; the swap made us its only owner.
            return *unsafe { Box::from_raw(recorded) };
        }
    }
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Ends a forked process (worker or zygote) at once, without running the
/// exit handlers or destructors of the program it is a fork of.
pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no locks; it ends the
    // process without touching any state of it.
    unsafe { libc::_exit(code) }
}

/// The worker's life. Never returns.
pub(crate) fn run(task_r: OwnedFd, result_w: OwnedFd, side: OwnedFd, init: &mut Initializer) -> ! {
    crate::side::worker_init(side);
    // The hook was installed in the parent before the fork; turning the
    // capture on is a thread-local store.
    CAPTURE.set(true);
    let message = match catch_unwind(AssertUnwindSafe(init)) {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(message),
        Err(payload) => Some(format!("panicked: {}", panic_message(payload.as_ref()))),
    };
    let hello = FromWorker::hello(message.as_deref());
    if frame::write_all(result_w.as_fd(), &hello).is_err() {
        exit(0); // the parent is gone
    }
    if message.is_some() {
        exit(EXIT_INIT_FAILED);
    }

    // Memory kept for receiving in the parent is shared copy-on-write here.
    frame::forget_inherited_spare();
    let mut reader = FrameReader::default();
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT);
    // A result `Vec` written from its own memory (`frame::lend`).
    let mut lent: Vec<frame::Lent> = Vec::new();
    let mut oldest: Option<Instant> = None;
    // A big result went out of `out` since its pages were last lent back.
    let mut lend = false;
    // When the last task ended (see the MAX_HOLD check below).
    let mut last_end = Instant::now();
    // Whether the worker read its pipe since the last task ended: if not,
    // the next task starts when the last one ended, without a clock read.
    let mut waited = true;
    let flush = |out: &mut Vec<u8>, oldest: &mut Option<Instant>| {
        if out.is_empty() {
            return;
        }
        if frame::write_all(result_w.as_fd(), out).is_err() {
            exit(0); // the parent is gone: nobody wants these results
        }
        out.clear();
        *oldest = None;
    };
    loop {
        match reader.next_frame() {
            Ok(Some(body)) => {
                // A result's age counts from its task's start, and "now" is
                // when the last task ended (no clock read of its own: on
                // this VM a clock read is a measurable part of a tiny
                // task). So the result of a task that alone took MAX_HOLD
                // goes out before the next task runs (the parent refills
                // this worker's pipe from it).
                if oldest.is_some_and(|t| last_end.duration_since(t) >= MAX_HOLD) {
                    flush(&mut out, &mut oldest);
                }
                let started = if waited { Instant::now() } else { last_end };
                waited = false;
                let (end, run) = run_task(body, &mut out, &mut lent, started);
                last_end = end;
                if let Some((start, head, from)) = run {
                    // A result carrying a run goes at once, with the results
                    // before it, in one vectored write: its head, then its
                    // bytes as encoded, with those of a `Vec` lent by the
                    // task where they belong.
                    let mut parts = vec![&out[..start], &head[..]];
                    parts.extend(frame::with_lent(&out, from, &lent));
                    if frame::write_all_vectored(result_w.as_fd(), &parts).is_err() {
                        exit(0); // the parent is gone
                    }
                    drop(parts);
                    lent.drain(..).for_each(frame::Lent::done);
                    out.clear();
                    oldest = None;
                    lend = true;
                    waited = true; // the write is no part of the next task
                    continue;
                }
                oldest.get_or_insert(started);
                // A result whose buffers' descriptors just went out on the
                // side channel goes at once too: the parent's collector
                // then finds both in one wake-up, not one for each.
                if out.len() >= FLUSH_AT || crate::side::worker_sent() {
                    lend |= out.len() > 4 * FLUSH_AT;
                    flush(&mut out, &mut oldest);
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => exit(EXIT_BAD_FRAME),
        }
        // No complete task is buffered: hand the results over before waiting.
        lend |= out.len() > 4 * FLUSH_AT;
        flush(&mut out, &mut oldest);
        if std::mem::take(&mut lend) {
            // A big result went out: keep its buffer for the next one, its
            // pages lent back to the kernel while we wait.
            frame::lend_back(&mut out);
        }
        waited = true;
        match reader.fill(task_r.as_fd()) {
            Ok(Fill::More | Fill::Drained) => {}
            Ok(Fill::Eof) if reader.partial().is_some() => exit(EXIT_BAD_FRAME),
            Ok(Fill::Eof) => exit(0),
            Ok(Fill::WouldBlock) | Err(_) => exit(EXIT_BAD_FRAME),
        }
    }
}

/// A result frame in the output buffer that carries a run apart: where it
/// starts, the head to write in place of its own, and where the bytes after
/// its own head begin (see [`frame::StartedResult::finish_with_run`]).
type RunFrame = (usize, Vec<u8>, usize);

/// Runs one task frame that arrived by `t0`, appending its result frame to
/// `out`; returns when it ended, and how to write the frame if it carries a
/// run.
fn run_task(
    body: Body,
    out: &mut Vec<u8>,
    lent: &mut Vec<frame::Lent>,
    t0: Instant,
) -> (Instant, Option<RunFrame>) {
    let Some((header, _)) = TaskHeader::parse(&body.bytes) else {
        exit(EXIT_BAD_FRAME);
    };
    let (tramp, func) = (header.tramp as usize, header.func as usize);
    // SAFETY: the parent wrote this address from `task::trampoline::<T, R>()`,
    // a `Trampoline` in the program image this worker is a fork of; the
    // pipe is private to the parent and this worker.
    let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(tramp) };
    let started = ResultFrame::begin(out, header.id);
    // Buffers' descriptors: received while the arguments decode, and those
    // of the results sent before the result frame.
    let fds = TaskHeader::carries_fds(&body.bytes);
    let ran = crate::side::worker_task(header.id, fds, || {
        frame::with_lending(lent, || tramp(func, body, TaskHeader::PAYLOAD_AT, out))
    });
    let Ok((run, sent_fds)) = ran else {
        exit(0); // the parent is gone
    };
    if sent_fds {
        started.mark_fds(out);
    }
    let end = Instant::now();
    let busy = end.duration_since(t0).as_nanos().min(u64::MAX as u128) as u64;
    // A lent `Vec` is a run of at least `RUN_MIN` bytes, so the frame has
    // a run whenever something was lent, and goes at once.
    let lent = frame::Lent::total(lent);
    match run {
        Some(run) => (end, Some(started.finish_with_run(out, busy, run, lent))),
        None => {
            debug_assert_eq!(lent, 0);
            started.finish(out, busy);
            (end, None)
        }
    }
}
