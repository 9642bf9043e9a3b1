//! `AsyncResult` as a `Future`, under tokio and under a minimal executor
//! written here, with real worker processes. Every wait has a deadline;
//! nothing is timed: the tests count polls and wake-ups.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use common::TestPool;
use forkpool::Error;

fn double(x: u64) -> u64 {
    x * 2
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A waker that unparks the executor's thread and counts its wake-ups.
struct ThreadWaker {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The smallest executor: polls `fut` on this thread, parking between
/// polls until woken. Returns the output, the number of polls and of
/// wake-ups. Fails the test after 30 s without an output.
fn block_on<F: Future>(fut: F) -> (F::Output, usize, usize) {
    let state = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(state.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return (out, polls, state.wakes.load(Ordering::SeqCst));
        }
        // Park until woken (spurious wake-ups return early, and are counted
        // as polls: the assertions below allow for a few).
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the future was never completed");
        std::thread::park_timeout(left);
    }
}

#[test]
fn apply_async_awaits_under_a_minimal_executor_that_only_polls_when_woken() {
    let pool = TestPool::new(1);
    let (out, polls, wakes) = block_on(pool.apply_async(sleep_ms, 200));
    assert_eq!(out.unwrap(), 200);
    // The first poll found nothing (the task sleeps 200 ms); the result's
    // arrival woke the executor, and the next poll finished. A future that
    // never registered its waker would have needed the 30 s deadline and
    // failed; one that woke itself in a loop would count many more polls.
    assert!(wakes >= 1, "never woken");
    assert!((2..=5).contains(&polls), "{polls} polls for one result");
}

#[test]
fn map_async_awaits_every_chunk_with_few_polls() {
    let pool = TestPool::new(2);
    // 8 chunks of 1250 (default chunks are cut as workers ask, so their
    // number is not fixed).
    let (out, polls, _) = block_on(pool.map_async_chunked(double, 0..10_000, 1250));
    let out = out.unwrap();
    assert_eq!(out.len(), 10_000);
    assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
    // At most one poll per chunk (8 chunks on 2 workers) plus the first:
    // a poll drains every completion already delivered.
    assert!(polls <= 9 + 3, "{polls} polls");
}

#[test]
fn await_reports_task_errors_like_get() {
    let pool = TestPool::new(2);
    let (out, _, _) =
        block_on(pool.map_async(|x: u32| if x == 3 { panic!("three") } else { x }, 0..6));
    let err = out.unwrap_err();
    assert_eq!(err.item(), Some(3));
    assert!(err.to_string().contains("three"), "{err}");
}

#[test]
fn awaiting_after_terminate_returns_terminated() {
    let pool = TestPool::new(1);
    let h = pool.apply_async(sleep_ms, 60_000);
    let waiter = std::thread::scope(|s| {
        let t = s.spawn(move || block_on(h).0);
        std::thread::sleep(Duration::from_millis(50));
        pool.terminate();
        t.join().unwrap()
    });
    assert!(matches!(waiter, Err(Error::Terminated)), "{waiter:?}");
}

#[test]
fn a_failed_submission_is_ready_at_the_first_poll() {
    let pool = TestPool::new(1);
    pool.close();
    let (out, polls, wakes) = block_on(pool.apply_async(double, 1));
    assert!(matches!(out, Err(Error::Closed)));
    assert_eq!((polls, wakes), (1, 0));
}

#[test]
fn tokio_current_thread_runtime_awaits_results() {
    let pool = TestPool::new(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let total = rt.block_on(async {
        let a = pool.apply_async(double, 21);
        let b = pool.map_async(double, 0..100);
        let c = pool.starmap_async(|x: u64, y: u64| x * y, [(6, 7)]);
        a.await.unwrap() + b.await.unwrap().iter().sum::<u64>() + c.await.unwrap()[0]
    });
    assert_eq!(total, 42 + 9900 + 42);
}

#[test]
fn tokio_tasks_on_many_threads_share_one_pool() {
    let pool = Arc::new(TestPool::new(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .build()
        .unwrap();
    let sums: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let out = pool.map_async(double, t * 100..(t + 1) * 100).await;
                    out.unwrap().iter().sum::<u64>()
                })
            })
            .collect();
        let mut sums = Vec::new();
        for t in tasks {
            sums.push(t.await.unwrap());
        }
        sums
    });
    for (t, s) in sums.iter().enumerate() {
        let t = t as u64;
        assert_eq!(*s, (t * 100..(t + 1) * 100).map(double).sum::<u64>());
    }
    drop(rt);
    drop(Arc::try_unwrap(pool).ok().expect("the runtime is gone"));
}

/// Collects a stream by polling it in a future, with `futures_core` only.
async fn collect<S: futures_core::Stream + Unpin>(mut s: S) -> Vec<S::Item> {
    let mut out = Vec::new();
    while let Some(x) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut s), cx))
            .await
    {
        out.push(x);
    }
    out
}

#[test]
fn imap_is_a_stream_under_a_minimal_executor_that_only_polls_when_woken() {
    let pool = TestPool::new(2);
    let (out, polls, wakes) = block_on(collect(pool.imap(sleep_ms, [50u64, 1, 1, 1, 1], 1)));
    let out: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, [50, 1, 1, 1, 1], "in input order");
    assert!(wakes >= 1, "never woken");
    // One poll per completion at most, plus the first and the last.
    assert!(polls <= 5 + 3, "{polls} polls for 5 tasks");
}

#[test]
fn imap_unordered_streams_under_tokio() {
    let pool = TestPool::new(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut got: Vec<u64> = rt
        .block_on(collect(pool.imap_unordered(double, 0..10_000, 16)))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    got.sort();
    assert_eq!(got, (0..10_000).map(double).collect::<Vec<_>>());
    // A failing item is one error in the stream, the rest go on.
    let items = rt.block_on(collect(pool.imap(
        |x: u32| if x == 2 { panic!("two") } else { x },
        0..4,
        1,
    )));
    assert_eq!(items.len(), 4);
    assert!(items[2].is_err() && items[3].is_ok());
}
