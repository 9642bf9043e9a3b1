//! Cancelling work: `AsyncResult::cancel`, dropping an unfinished handle,
//! and `detach`. Tasks count their runs in a file (one byte each); the
//! tests count runs, never time.

mod common;

use std::time::Duration;

use common::TestPool;
use forkpool::Error;

/// Appends one byte to `path` (a run), then sleeps 20 ms.
fn count_and_sleep(path: String) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(20));
}

fn double(x: u64) -> u64 {
    x * 2
}

/// A run counter: a fresh empty file, its path, and the temp dir that
/// holds it.
fn counter() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs");
    std::fs::write(&path, b"").unwrap();
    (dir, path.to_str().unwrap().to_string())
}

fn runs(path: &str) -> usize {
    std::fs::read(path).unwrap().len()
}

/// Most tasks a worker may hold beyond the one it runs when the job is
/// cancelled (its window of queued work for 20 ms tasks is one or two).
const HELD_PER_WORKER: usize = 4;

#[test]
fn cancel_drops_the_queued_tasks_and_frees_the_pool_at_once() {
    const PROCESSES: usize = 2;
    let (_dir, path) = counter();
    let pool = TestPool::new(PROCESSES);
    let mut h = pool.map_async_chunked(count_and_sleep, vec![path.clone(); 1000], 1);
    common::wait_for("a few tasks to run", || runs(&path) >= 4);
    assert!(h.cancel(), "the map was not finished");
    let at_cancel = runs(&path);
    match h.get() {
        Err(Error::Cancelled { completed, items }) => {
            assert_eq!(items, 1000);
            assert!(completed <= at_cancel, "{completed} > {at_cancel}");
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The next call is not queued behind the cancelled job: when its
    // result is in, only the tasks the workers held have run.
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
    let at_next = runs(&path);
    assert!(
        at_next <= at_cancel + PROCESSES * HELD_PER_WORKER,
        "{at_next} tasks had run when the next call returned ({at_cancel} at the cancel)"
    );
    // And nothing of it runs later.
    pool.close();
    pool.join().unwrap();
    let total = runs(&path);
    assert!(
        total <= at_cancel + PROCESSES * HELD_PER_WORKER,
        "{total} of 1000 tasks ran ({at_cancel} at the cancel)"
    );
}

#[test]
fn dropping_an_unfinished_async_result_cancels_its_queued_tasks() {
    const PROCESSES: usize = 2;
    let (_dir, path) = counter();
    let pool = TestPool::new(PROCESSES);
    let h = pool.map_async_chunked(count_and_sleep, vec![path.clone(); 1000], 1);
    common::wait_for("a few tasks to run", || runs(&path) >= 4);
    drop(h);
    let at_drop = runs(&path);
    pool.close();
    pool.join().unwrap();
    let total = runs(&path);
    assert!(
        total <= at_drop + PROCESSES * HELD_PER_WORKER,
        "{total} of 1000 tasks ran after the handle was dropped ({at_drop} before)"
    );
}

#[test]
fn dropped_apply_async_handles_cancel_too() {
    let (_dir, path) = counter();
    let pool = TestPool::new(1);
    let handles: Vec<_> = (0..200)
        .map(|_| pool.apply_async(count_and_sleep, path.clone()))
        .collect();
    common::wait_for("a task to run", || runs(&path) >= 1);
    drop(handles);
    pool.close();
    pool.join().unwrap();
    let total = runs(&path);
    assert!(total <= 1 + HELD_PER_WORKER, "{total} of 200 ran");
}

#[test]
fn detach_keeps_the_work_running_to_the_end() {
    let (_dir, path) = counter();
    let pool = TestPool::new(2);
    pool.map_async_chunked(count_and_sleep, vec![path.clone(); 20], 1)
        .detach();
    for _ in 0..5 {
        pool.apply_async(count_and_sleep, path.clone()).detach();
    }
    pool.close();
    pool.join().unwrap();
    assert_eq!(runs(&path), 25);
}

#[test]
fn cancel_after_every_result_arrived_changes_nothing() {
    let pool = TestPool::new(2);
    let mut h = pool.map_async(double, 0..100);
    common::wait_for("the results", || h.ready());
    assert!(!h.cancel());
    assert_eq!(h.get().unwrap().len(), 100);
}

#[test]
fn a_cancelled_handle_awaits_to_cancelled() {
    let (_dir, path) = counter();
    let pool = TestPool::new(1);
    let mut h = pool.map_async_chunked(count_and_sleep, vec![path.clone(); 100], 1);
    assert!(h.cancel());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(h);
    assert!(
        matches!(out, Err(Error::Cancelled { items: 100, .. })),
        "{out:?}"
    );
    // The pool serves the next call.
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
}

#[test]
fn cancelled_endless_tasks_that_workers_hold_end_at_the_task_timeout() {
    /// Counts its run, then never returns.
    fn count_and_spin(path: String) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"x").unwrap();
        loop {
            std::hint::spin_loop();
        }
    }
    const PROCESSES: usize = 2;
    let (_dir, path) = counter();
    let pool = TestPool::build(|| {
        forkpool::Pool::builder()
            .processes(PROCESSES)
            .task_timeout(Duration::from_millis(300))
            .build()
    });
    let mut h = pool.map_async_chunked(count_and_spin, vec![path.clone(); 100], 1);
    common::wait_for("both workers to be spinning", || runs(&path) >= PROCESSES);
    assert!(h.cancel());
    assert!(matches!(h.get(), Err(Error::Cancelled { .. })));
    // The held tasks never end by themselves: the next call is served
    // because the task timeout replaces their workers, and none of the
    // cancelled tasks runs in the replacements.
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
    let total = runs(&path);
    assert!(
        total <= PROCESSES * HELD_PER_WORKER,
        "{total} of 100 endless tasks started"
    );
}
