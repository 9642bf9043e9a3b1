//! Where work runs: every job reaches every worker whatever ran before it,
//! a dropped `IMap` leaves little behind, and an input iterator that panics
//! comes back in its place. Work is counted per worker pid and tasks are
//! counted in a shared file, never timed.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestPool;
use forkpool::{Error, Pid};

/// Spins on the clock for `us` microseconds (CPU-bound, like real work),
/// then says which process ran it.
fn spin_us(us: u64) -> i32 {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    std::process::id() as i32
}

fn tiny(x: u64) -> u64 {
    x.wrapping_mul(3)
}

/// Items per worker pid.
fn per_pid(pids: impl IntoIterator<Item = i32>) -> HashMap<i32, usize> {
    let mut m = HashMap::new();
    for p in pids {
        *m.entry(p).or_default() += 1;
    }
    m
}

/// Asserts every one of `workers` ran at least a quarter of its fair share
/// of `total` items.
fn assert_spread(what: &str, counts: &HashMap<i32, usize>, workers: &[i32], total: usize) {
    let fair = total / workers.len();
    for w in workers {
        let n = counts.get(w).copied().unwrap_or(0);
        assert!(
            n * 4 >= fair,
            "{what}: worker {w} ran {n} of {total} items (fair share {fair}); per pid: {counts:?}"
        );
    }
}

/// Runs `f` on a thread and waits at most 60 s for it: a hang fails the
/// test instead of stalling the suite (a panic in `f` is the test's).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sent nothing and did not panic"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within 60 s"),
    }
}

/// Sleeps `us` microseconds, sixteen times that in the worker `slow`: a
/// worker that is slower (loaded, preempted, on a busy core) for reasons
/// the pool cannot know. (A sleep, not a spin: spinning workers of tests
/// running side by side on two cores would slow each other down too.)
fn slow_in((slow, us): (i32, u64)) -> i32 {
    let pid = std::process::id() as i32;
    std::thread::sleep(Duration::from_micros(if pid == slow {
        16 * us
    } else {
        us
    }));
    pid
}

/// Items of [`slow_in`] that are slow in the first worker.
fn slow_in_first(pool: &forkpool::Pool, n: usize, us: u64) -> (Vec<(i32, u64)>, i32, i32) {
    let pids: Vec<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    (vec![(pids[0], us); n], pids[0], pids[1])
}

#[test]
fn a_map_after_tiny_tasks_is_not_committed_to_a_slow_worker() {
    // The old scheduler let each worker hold 1024 tasks after a job of tiny
    // ones, so the next map's eight chunks were all written at once, four
    // to each worker, and the fast worker idled while the slow one ran its
    // four. Committing late, the fast worker takes what it has time for.
    let pool = TestPool::new(2);
    let out = pool.map_chunked(tiny, 0..100_000u64, 1).unwrap();
    assert_eq!(out.len(), 100_000);
    let (items, slow, fast) = slow_in_first(&pool, 48, 3_000);
    let counts = per_pid(pool.map(slow_in, items).unwrap());
    let on_fast = counts.get(&fast).copied().unwrap_or(0);
    assert!(
        on_fast * 3 >= 48 * 2,
        "the fast worker ran {on_fast} of 48 items (the slow one {:?}): work was \
         committed before a worker was free for it",
        counts.get(&slow)
    );
}

#[test]
fn an_imap_unordered_after_tiny_tasks_is_not_committed_to_a_slow_worker() {
    let pool = TestPool::new(2);
    let s: u64 = pool
        .imap_unordered(tiny, 0..20_000u64, 1)
        .map(Result::unwrap)
        .sum();
    assert_eq!(s, (0..20_000u64).map(tiny).sum());
    let (items, slow, fast) = slow_in_first(&pool, 48, 3_000);
    let counts = per_pid(pool.imap_unordered(slow_in, items, 1).map(Result::unwrap));
    let on_fast = counts.get(&fast).copied().unwrap_or(0);
    assert!(
        on_fast * 3 >= 48 * 2,
        "the fast worker ran {on_fast} of 48 items (the slow one {:?})",
        counts.get(&slow)
    );
}

#[test]
fn a_map_after_an_imap_unordered_of_1ms_tasks_is_not_committed_to_a_slow_worker() {
    let pool = TestPool::new(2);
    let n = pool
        .imap_unordered(spin_us, vec![1_000u64; 200], 1)
        .map(Result::unwrap)
        .count();
    assert_eq!(n, 200);
    let (items, slow, fast) = slow_in_first(&pool, 48, 3_000);
    let counts = per_pid(pool.map(slow_in, items).unwrap());
    let on_fast = counts.get(&fast).copied().unwrap_or(0);
    assert!(
        on_fast * 3 >= 48 * 2,
        "the fast worker ran {on_fast} of 48 items (the slow one {:?})",
        counts.get(&slow)
    );
}

#[test]
fn default_map_chunks_shrink_so_costly_items_at_the_end_spread() {
    // 400 cheap items, then 8 costly ones sitting together at the end: with
    // chunks fixed at submit (about four per worker) they fall into one
    // chunk, on one worker.
    let pool = TestPool::new(2);
    let workers: Vec<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    let mut costs = vec![50u64; 400];
    costs.extend([30_000u64; 8]);
    let pids = pool.map(spin_us, costs).unwrap();
    let costly = per_pid(pids[400..].iter().copied());
    assert_spread("the costly tail", &costly, &workers, 8);
}

/// Appends one byte to the file at `path`: counts the tasks that ran.
fn count_run(path: String) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(b"x").unwrap();
    1
}

/// Most tasks a dropped `IMap` may leave running in this test: what the
/// workers hold is bounded by the job's own window (one task per worker,
/// plus one per task of the job completed so far), so after 10 results a
/// few dozen at most.
const DROPPED_IMAP_BOUND: usize = 100;

#[test]
fn a_dropped_imap_after_tiny_tasks_leaves_few_tasks_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs");
    std::fs::write(&path, b"").unwrap();
    let path = path.to_str().unwrap().to_string();
    let pool = TestPool::new(2);
    // Tiny work first: the old scheduler then let each worker hold 1024.
    let out = pool.map_chunked(tiny, 0..100_000u64, 1).unwrap();
    assert_eq!(out.len(), 100_000);
    {
        let mut it = pool.imap_unordered(count_run, std::iter::repeat_n(path.clone(), 100_000), 1);
        for _ in 0..10 {
            it.next().unwrap().unwrap();
        }
    }
    // A worker runs what it held before any later task: once each worker
    // has run a task of a later job, nothing of the IMap is left anywhere.
    let workers: std::collections::HashSet<i32> =
        pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen != workers {
        assert!(
            Instant::now() < deadline,
            "a later job never reached {workers:?}"
        );
        seen.extend(pool.map(spin_us, vec![20_000u64; 4]).unwrap());
    }
    let ran = std::fs::read(&path).unwrap().len();
    assert!(
        (10..=DROPPED_IMAP_BOUND).contains(&ran),
        "{ran} of 100000 tasks ran after an IMap was dropped at 10 results"
    );
    pool.map(tiny, 0..100u64).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        ran,
        "tasks kept running"
    );
}

/// An input of `n` items that panics when asked for item `fail_at`.
fn failing_input(n: u64, fail_at: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |&i| {
        if i == fail_at {
            panic!("input broke at {i}");
        }
    })
}

/// Collects an iterator of results: the values before the first error,
/// the error, and whether the iterator then ended.
fn split_at_error(mut it: impl Iterator<Item = forkpool::Result<u64>>) -> (Vec<u64>, Error, bool) {
    let mut ok = Vec::new();
    loop {
        match it.next() {
            Some(Ok(v)) => ok.push(v),
            Some(Err(e)) => {
                let ended = it.next().is_none() && it.next().is_none();
                return (ok, e, ended);
            }
            None => panic!("the iterator ended without reporting the input's panic"),
        }
    }
}

fn assert_input_panicked(e: &Error, item: usize) {
    match e {
        Error::InputPanicked { item: i, message } => {
            assert_eq!(*i, item, "{e}");
            assert!(message.contains("input broke at"), "{e}");
            assert!(e.to_string().contains("the input iterator panicked"), "{e}");
        }
        other => panic!("expected InputPanicked for item {item}, got {other:?}"),
    }
}

#[test]
fn imap_input_that_panics_delivers_the_results_before_it_as_python_does() {
    // CPython's test_imap_handle_iterable_exception: (items, fail at,
    // chunksize) -> results before the error.
    within_a_minute("the CPython cases", || {
        let pool = TestPool::new(2);
        for (n, fail_at, chunksize, results) in [(10, 3, 1, 3), (20, 7, 2, 6), (20, 7, 4, 4)] {
            let it = pool.imap(tiny, failing_input(n, fail_at), chunksize);
            let (ok, err, ended) = split_at_error(it);
            let want: Vec<u64> = (0..results).map(tiny).collect();
            assert_eq!(
                ok, want,
                "{n} items failing at {fail_at}, chunksize {chunksize}"
            );
            assert_input_panicked(&err, fail_at as usize);
            assert!(ended, "the iterator goes on after the input's panic");
        }
        // The pool serves the next call at once.
        assert_eq!(pool.map(tiny, 0..100u64).unwrap().len(), 100);
    });
}

#[test]
fn imap_unordered_input_that_panics_delivers_the_results_before_it() {
    within_a_minute("imap_unordered", || {
        let pool = TestPool::new(2);
        let (mut ok, err, ended) =
            split_at_error(pool.imap_unordered(tiny, failing_input(10, 3), 1));
        ok.sort();
        assert_eq!(ok, [0, 1, 2].map(tiny));
        assert_input_panicked(&err, 3);
        assert!(ended);
        // A big input failing late: every result before it arrives.
        let (ok, err, _) =
            split_at_error(pool.imap_unordered(tiny, failing_input(50_000, 30_000), 7));
        assert_eq!(ok.len(), 30_000 / 7 * 7);
        assert_input_panicked(&err, 30_000);
    });
}

#[test]
fn next_after_an_input_panic_returns_none_at_once() {
    within_a_minute("next() after the failure", || {
        let pool = TestPool::new(2);
        let mut it = pool.imap(tiny, failing_input(10, 0), 1);
        assert_input_panicked(&it.next().unwrap().unwrap_err(), 0);
        for _ in 0..3 {
            assert!(it.next().is_none());
        }
        drop(it);
        let mut it = pool.imap_unordered(tiny, failing_input(10, 5), 2);
        let got: Vec<_> = it.by_ref().collect();
        assert_eq!(got.len(), 5);
        assert!(it.next().is_none());
    });
}

#[test]
fn map_input_that_panics_is_an_error_and_the_pool_goes_on() {
    within_a_minute("the map family", || {
        let pool = TestPool::new(2);
        assert_input_panicked(&pool.map(tiny, failing_input(100, 42)).unwrap_err(), 42);
        assert_input_panicked(
            &pool
                .map_chunked(tiny, failing_input(100, 7), 3)
                .unwrap_err(),
            7,
        );
        let h = pool.map_async(tiny, failing_input(100, 0));
        assert_input_panicked(&h.get().unwrap_err(), 0);
        assert_eq!(pool.map(tiny, 0..1000u64).unwrap()[999], tiny(999));
    });
}

/// `x * 3`, but panics on every multiple of 997.
fn tiny_or_panic(x: u64) -> u64 {
    assert!(!x.is_multiple_of(997) || x == 0, "item {x} panics");
    x * 3
}

#[test]
fn tiny_tasks_whose_results_arrive_merged_keep_each_items_own_outcome() {
    // The collector merges the results of consecutive tiny tasks from one
    // worker into one completion: every item must still get its own
    // outcome, a panic in the middle of a batch included.
    const N: u64 = 30_000;
    let pool = TestPool::new(2);
    let want = |i: u64, r: &forkpool::Result<u64>| match r {
        Ok(v) => {
            assert!(
                !i.is_multiple_of(997) || i == 0,
                "item {i} did not panic: {v}"
            );
            assert_eq!(*v, i * 3);
        }
        Err(Error::Panicked { item, message, .. }) => {
            assert_eq!(*item as u64, i);
            assert!(message.contains(&format!("item {i} panics")), "{message}");
        }
        Err(e) => panic!("item {i}: {e}"),
    };
    // Warm: the function's tiny cost is known, so batches are large.
    pool.map_chunked(tiny, 0..N, 1).unwrap();
    let ordered: Vec<_> = pool.imap(tiny_or_panic, 0..N, 1).collect();
    assert_eq!(ordered.len() as u64, N);
    for (i, r) in ordered.iter().enumerate() {
        want(i as u64, r);
    }
    let mut unordered: Vec<(u64, forkpool::Result<u64>)> = pool
        .imap_unordered(tiny_or_panic, 0..N, 1)
        .map(|r| match &r {
            Ok(v) => (v / 3, r),
            Err(Error::Panicked { item, .. }) => (*item as u64, r),
            Err(e) => panic!("{e}"),
        })
        .collect();
    unordered.sort_by_key(|(i, _)| *i);
    assert!(unordered.iter().map(|(i, _)| *i).eq(0..N));
    for (i, r) in &unordered {
        want(*i, r);
    }
    match pool.map_chunked(tiny_or_panic, 0..N, 1) {
        Err(Error::Panicked { item: 997, .. }) => {}
        other => panic!("expected item 997's panic, got {other:?}"),
    }
    let out = pool.map_chunked(tiny, 0..N, 1).unwrap();
    assert!(out.iter().copied().eq((0..N).map(tiny)));
}
