//! Every call of the public API, with real worker processes.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Procs, TestPool};
use forkpool::{Error, Pid, Pool};

fn double(x: u64) -> u64 {
    x * 2
}

fn pid_of(_: u64) -> i32 {
    std::process::id() as i32
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let out = pool.map(double, 0..1000).unwrap();
    assert_eq!(out, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    drop(pool);
    procs.assert_gone();
}

#[test]
fn map_runs_in_the_workers_not_the_parent() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let workers: HashSet<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    let pids: HashSet<i32> = pool
        .map_chunked(pid_of, 0..200, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(!pids.contains(&(std::process::id() as i32)));
    assert!(pids.is_subset(&workers), "{pids:?} not within {workers:?}");
    drop(pool);
    procs.assert_gone();
}

#[test]
fn map_chunked_handles_every_chunk_size() {
    let pool = TestPool::new(2);
    for chunksize in [0, 1, 2, 7, 100, 1000, 5000] {
        let out = pool.map_chunked(double, 0..1000, chunksize).unwrap();
        assert_eq!(out.len(), 1000, "chunksize {chunksize}");
        assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
    }
}

#[test]
fn empty_input_gives_empty_output_everywhere() {
    let pool = TestPool::new(2);
    let none: Vec<u64> = Vec::new();
    assert_eq!(pool.map(double, none.clone()).unwrap(), Vec::<u64>::new());
    assert_eq!(
        pool.map_chunked(double, none.clone(), 4).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        pool.map_async(double, none.clone()).get().unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(pool.imap(double, none.clone(), 1).count(), 0);
    assert_eq!(pool.imap_unordered(double, none, 1).count(), 0);
}

#[test]
fn one_worker_pool_does_everything() {
    let pool = TestPool::new(1);
    let procs = Procs::of(&pool);
    assert_eq!(pool.worker_pids().len(), 1);
    assert_eq!(pool.map(double, 0..100).unwrap()[99], 198);
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
    let got: Vec<u64> = pool.imap(double, 0..10, 3).map(Result::unwrap).collect();
    assert_eq!(got, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    drop(pool);
    procs.assert_gone();
}

#[test]
fn more_workers_than_tasks() {
    let pool = TestPool::new(6);
    let procs = Procs::of(&pool);
    assert_eq!(pool.worker_pids().len(), 6);
    assert_eq!(pool.map(double, [5, 6]).unwrap(), [10, 12]);
    assert_eq!(pool.map_chunked(double, [1], 100).unwrap(), [2]);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn apply_and_apply_async() {
    let pool = TestPool::new(2);
    assert_eq!(pool.apply(double, 50).unwrap(), 100);
    let handles: Vec<_> = (0..20u64).map(|i| pool.apply_async(double, i)).collect();
    let out: Vec<u64> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(out, (0..20).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn get_timeout_times_out_then_delivers() {
    let pool = TestPool::new(1);
    let mut h = pool.apply_async(sleep_ms, 400);
    assert!(!h.ready());
    match h.get_timeout(Duration::from_millis(20)) {
        Err(Error::Timeout { waited }) => assert_eq!(waited, Duration::from_millis(20)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The handle is still good: the result arrives.
    assert_eq!(h.get_timeout(Duration::from_secs(30)).unwrap(), 400);
    assert!(h.ready());
    assert!(matches!(
        h.get_timeout(Duration::from_secs(1)),
        Err(Error::AlreadyTaken)
    ));
}

#[test]
fn ready_turns_true_when_the_work_is_done() {
    let pool = TestPool::new(2);
    let h = pool.map_async(sleep_ms, [30, 30, 30]);
    common::wait_for("map_async to be ready", || h.ready());
    assert_eq!(h.get().unwrap(), [30, 30, 30]);
}

#[test]
fn map_async_overlaps_with_the_caller() {
    let pool = TestPool::new(2);
    let h = pool.map_async(double, 0..10_000);
    let other = pool.map(double, 0..10).unwrap();
    assert_eq!(other[9], 18);
    let out = h.get().unwrap();
    assert_eq!(out.len(), 10_000);
    assert_eq!(out[9_999], 19_998);
}

#[test]
fn imap_is_ordered_even_when_tasks_finish_out_of_order() {
    let pool = TestPool::new(2);
    // The first task is the slowest: results 2.. finish before it.
    let durations = [300u64, 10, 10, 10, 10, 10];
    let t0 = Instant::now();
    let mut it = pool.imap(sleep_ms, durations, 1);
    assert_eq!(it.next().unwrap().unwrap(), 300);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let rest: Vec<u64> = it.map(Result::unwrap).collect();
    assert_eq!(rest, [10, 10, 10, 10, 10]);
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    let pool = TestPool::new(2);
    let got: Vec<u64> = pool
        .imap_unordered(sleep_ms, [500u64, 10, 10, 10], 1)
        .map(Result::unwrap)
        .collect();
    // The slow one is last; the other worker ran the three fast ones.
    assert_eq!(got, [10, 10, 10, 500]);
}

#[test]
fn imap_consumes_its_input_lazily() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = TestPool::new(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = pool
        .imap(double, endless, 1)
        .take(10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    let n = pulled.load(Ordering::Relaxed);
    assert!(
        n < 1_000_000,
        "an endless input was drained: {n} items pulled"
    );
}

#[test]
fn imap_dropped_early_cancels_queued_work() {
    fn count_and_sleep(path: String) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs");
    std::fs::write(&path, b"").unwrap();
    let path = path.to_str().unwrap().to_string();
    let pool = TestPool::new(1);
    {
        let mut it = pool.imap(count_and_sleep, std::iter::repeat_n(path.clone(), 1000), 1);
        it.next().unwrap().unwrap();
    }
    // Anything still queued at the worker runs before this; nothing after.
    pool.apply(double, 1).unwrap();
    let ran = std::fs::read(&path).unwrap().len();
    assert!(
        ran < 50,
        "{ran} of 1000 tasks ran after the imap was dropped"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        ran,
        "tasks kept running"
    );
}

#[test]
fn args_and_results_of_64_mib() {
    fn checksum_and_echo(v: Vec<f64>) -> (f64, Vec<f64>) {
        (v.iter().sum(), v)
    }
    let pool = TestPool::new(2);
    let n = 64 << 20 >> 3; // 64 MiB of f64
    let big: Vec<f64> = (0..n).map(|i| (i % 1000) as f64).collect();
    let expected: f64 = big.iter().sum();
    let (sum, back) = pool.apply(checksum_and_echo, big.clone()).unwrap();
    assert_eq!(sum, expected);
    assert_eq!(back.len(), n);
    assert!(back == big);
    // Two at once, through both workers.
    let out = pool
        .map_chunked(checksum_and_echo, [big.clone(), big], 1)
        .unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(s, v)| *s == expected && v.len() == n));
}

#[test]
fn a_hundred_thousand_tiny_tasks() {
    let pool = TestPool::new(2);
    let got: u64 = pool
        .imap_unordered(double, 0..100_000, 1)
        .map(Result::unwrap)
        .sum();
    assert_eq!(got, (0..100_000u64).map(|x| x * 2).sum());
    let out = pool.map_chunked(double, 0..100_000, 1).unwrap();
    assert_eq!(out.len(), 100_000);
    assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
}

#[test]
fn initializer_runs_in_every_worker_after_fork() {
    static WORKER_TAG: OnceLock<(u64, i32)> = OnceLock::new();
    fn tag(_: ()) -> (u64, i32) {
        *WORKER_TAG.get().expect("the initializer ran")
    }
    let secret = 0xfeed_u64;
    let pool = TestPool::build(|| {
        Pool::builder()
            .processes(2)
            .initializer(move || {
                WORKER_TAG.set((secret, std::process::id() as i32)).unwrap();
            })
            .build()
    });
    let tags = pool.map_chunked(tag, vec![(); 50], 1).unwrap();
    let workers: HashSet<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    for (s, pid) in tags {
        assert_eq!(s, secret);
        // The tag was set in the worker that answered, not inherited.
        assert!(workers.contains(&pid));
    }
    // The parent never ran it.
    assert!(WORKER_TAG.get().is_none());
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let pool = TestPool::build(|| Pool::builder().processes(2).max_tasks_per_child(3).build());
    let mut procs = Procs::of(&pool);
    let first: HashSet<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    let pids = pool.map_chunked(pid_of, 0..30, 1).unwrap();
    procs.pids.extend(pids.iter().map(|&p| Pid::from_raw(p)));
    let mut counts = std::collections::HashMap::new();
    for p in &pids {
        *counts.entry(*p).or_insert(0) += 1;
    }
    // 30 tasks, 3 per worker: at least 10 different workers served.
    assert!(counts.len() >= 10, "{counts:?}");
    assert!(counts.values().all(|&c| c <= 3), "{counts:?}");
    common::wait_for("replacements to be ready", || pool.worker_pids().len() == 2);
    let now: HashSet<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    assert!(now.is_disjoint(&first), "{now:?} vs {first:?}");
    procs.add(&pool);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn close_then_join_finishes_the_work_and_reaps_everything() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let h = pool.map_async(sleep_ms, [50, 50, 50, 50]);
    assert!(matches!(pool.join(), Err(Error::StillRunning)));
    pool.close();
    assert!(matches!(pool.map(double, [1]), Err(Error::Closed)));
    assert!(matches!(pool.apply(double, 1), Err(Error::Closed)));
    assert!(matches!(
        pool.apply_async(double, 1).get(),
        Err(Error::Closed)
    ));
    assert!(matches!(
        pool.imap(double, [1], 1).next(),
        Some(Err(Error::Closed))
    ));
    pool.join().unwrap();
    assert_eq!(h.get().unwrap(), [50, 50, 50, 50]);
    assert!(pool.worker_pids().is_empty());
    procs.assert_gone();
    // Still closed (not terminated) after the join; joining again, or
    // dropping, is harmless.
    assert!(matches!(pool.map(double, [1]), Err(Error::Closed)));
    pool.join().unwrap();
    drop(pool);
}

#[test]
fn terminate_mid_map_returns_promptly_and_fails_the_work() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let h = pool.map_async(sleep_ms, [60_000u64; 8]);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    pool.terminate();
    // The tasks sleep a minute each: returning at all shows nothing waited.
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(matches!(h.get(), Err(Error::Terminated)));
    procs.assert_gone();
    assert!(matches!(pool.map(double, [1]), Err(Error::Terminated)));
    pool.join().unwrap();
}

#[test]
fn a_pool_is_shared_by_threads() {
    let pool = TestPool::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || pool.map(double, t * 1000..(t + 1) * 1000).unwrap())
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let out = h.join().unwrap();
            assert_eq!(out[0], 2 * 1000 * t as u64);
            assert_eq!(out.len(), 1000);
        }
    });
}

#[test]
fn builder_rejects_zero_processes_and_zero_max_tasks() {
    assert!(matches!(Pool::new(0), Err(Error::Config { .. })));
    assert!(matches!(
        Pool::builder().processes(1).max_tasks_per_child(0).build(),
        Err(Error::Config { .. })
    ));
}

#[test]
fn default_processes_is_the_available_parallelism() {
    let pool = TestPool::build(|| Pool::builder().build());
    let n = std::thread::available_parallelism().unwrap().get();
    assert_eq!(pool.processes(), n);
    assert_eq!(pool.worker_pids().len(), n);
}

#[test]
fn strings_structs_and_enums_cross_the_pipes() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Shape {
        Circle { r: f64 },
        Rect(f64, f64),
    }
    fn area(s: Shape) -> (String, f64) {
        match s {
            Shape::Circle { r } => ("circle".into(), 3.0 * r * r),
            Shape::Rect(w, h) => ("rect".into(), w * h),
        }
    }
    let pool = TestPool::new(2);
    let out = pool
        .map(area, [Shape::Circle { r: 1.0 }, Shape::Rect(2.0, 3.0)])
        .unwrap();
    assert_eq!(
        out,
        [("circle".to_string(), 3.0), ("rect".to_string(), 6.0)]
    );
}

#[test]
fn starmap_calls_functions_of_two_three_and_four_arguments() {
    fn add(a: u64, b: u64) -> u64 {
        a + b
    }
    fn where_ran(a: u8, b: u16, c: u32) -> (u64, i32) {
        (a as u64 + b as u64 + c as u64, std::process::id() as i32)
    }
    let pool = TestPool::new(2);
    let workers: HashSet<i32> = pool.worker_pids().into_iter().map(Pid::as_raw).collect();
    let pairs: Vec<(u64, u64)> = (0..1000).map(|i| (i, 10 * i)).collect();
    let sums = pool.starmap(add, pairs).unwrap();
    assert_eq!(sums, (0..1000).map(|i| 11 * i).collect::<Vec<_>>());
    let triples = pool
        .starmap(where_ran, (0..100u32).map(|i| (1u8, 2u16, i)))
        .unwrap();
    for (i, (s, pid)) in triples.into_iter().enumerate() {
        assert_eq!(s, 3 + i as u64);
        assert!(workers.contains(&pid), "ran in {pid}, not a worker");
    }
    let quads = pool
        .starmap(
            |s: String, n: usize, sep: char, upper: bool| {
                let t = vec![s; n].join(&sep.to_string());
                if upper { t.to_uppercase() } else { t }
            },
            [
                ("ab".to_string(), 3, '-', true),
                ("x".to_string(), 1, '+', false),
            ],
        )
        .unwrap();
    assert_eq!(quads, ["AB-AB-AB", "x"]);
}

#[test]
fn starmap_errors_name_the_item() {
    let pool = TestPool::new(2);
    let err = pool
        .starmap(
            |a: u32, b: u32| if a == 7 { panic!("seven") } else { a + b },
            (0..10).map(|i| (i, i)),
        )
        .unwrap_err();
    assert_eq!(err.item(), Some(7));
    assert!(err.to_string().contains("seven"), "{err}");
    assert!(
        pool.starmap(|a: u8, b: u8| a + b, Vec::new())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn pool_builder_default_builds_like_pool_builder() {
    let pool = TestPool::build(|| forkpool::PoolBuilder::default().processes(2).build());
    assert_eq!(pool.worker_pids().len(), 2);
    assert_eq!(pool.map(double, [4]).unwrap(), [8]);
}

#[test]
fn imap_auto_chunks_inputs_of_known_length_and_streams_the_others() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = TestPool::new(2);
    // 3200 items, 2 workers: chunks of 100, so each task's items ran in
    // one worker in a row. Count the runs of equal pids.
    let pids: Vec<i32> = pool
        .imap_auto(pid_of, 0..3200)
        .map(Result::unwrap)
        .collect();
    let switches = pids.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches < 32, "{switches} worker switches: not chunked");
    let mut per_pid: HashMap<i32, usize> = HashMap::new();
    for p in &pids {
        *per_pid.entry(*p).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n % 100 == 0), "{per_pid:?}");
    // An endless input: one item per task, pulled lazily.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = pool
        .imap_unordered_auto(double, endless)
        .take(10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first.len(), 10);
    assert!(pulled.load(Ordering::Relaxed) < 1_000_000);
    let mut all: Vec<u64> = pool
        .imap_unordered_auto(double, 0..1000)
        .map(Result::unwrap)
        .collect();
    all.sort();
    assert_eq!(all, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn borrowed_items_are_encoded_in_place_once_each() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ENCODED: AtomicUsize = AtomicUsize::new(0);
    /// Not `Clone`: a map that compiled by cloning it could not exist.
    #[derive(serde::Deserialize)]
    struct Word(String);
    impl serde::Serialize for Word {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            ENCODED.fetch_add(1, Ordering::SeqCst);
            s.serialize_newtype_struct("Word", &self.0)
        }
    }
    fn word_len(w: Word) -> usize {
        w.0.len()
    }
    fn str_len(s: String) -> usize {
        s.len()
    }
    fn total(v: Vec<u32>) -> u32 {
        v.iter().sum()
    }
    let pool = TestPool::new(2);
    let words: Vec<Word> = (0..1000).map(|i| Word("x".repeat(i % 7))).collect();
    let lens = pool.map(word_len, &words).unwrap();
    assert_eq!(
        ENCODED.load(Ordering::SeqCst),
        1000,
        "each item encoded once"
    );
    assert!(lens.iter().enumerate().all(|(i, &n)| n == i % 7));
    let lens = pool.map_chunked(word_len, &words[..10], 3).unwrap();
    assert_eq!(lens, [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]);
    assert_eq!(pool.apply(word_len, &words[6]).unwrap(), 6);
    assert_eq!(
        pool.map_async(word_len, words.iter().rev()).get().unwrap()[0],
        999 % 7
    );
    // &str for String, &[u32] for Vec<u32>.
    let strs: Vec<String> = ["a", "bb"].map(String::from).to_vec();
    assert_eq!(
        pool.map(str_len, strs.iter().map(String::as_str)).unwrap(),
        [1, 2]
    );
    let rows: Vec<Vec<u32>> = vec![vec![1, 2], vec![3, 4, 5]];
    assert_eq!(
        pool.map(total, rows.iter().map(Vec::as_slice)).unwrap(),
        [3, 12]
    );
    assert_eq!(words.len(), 1000, "still ours");
}
