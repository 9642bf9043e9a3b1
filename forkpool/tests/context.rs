//! Contexts made after the pool started: `map_with`, `apply_with` and
//! `Context`. The bytes each worker read are counted from its
//! `/proc/<pid>/io` (`rchar`: every byte its `read` calls returned, task
//! pipes and the context's memory file alike).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::TestPool;
use forkpool::{Context, Pid};

const MIB: u64 = 1 << 20;

/// Bytes `pid` has read so far.
fn rchar(pid: Pid) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn reads(pids: &[Pid]) -> HashMap<Pid, u64> {
    pids.iter().map(|&p| (p, rchar(p))).collect()
}

fn lookup(table: &[u64], i: usize) -> u64 {
    table[i]
}

fn lookup_ctx((table, i): (Context<Vec<u64>>, usize)) -> (u64, i32) {
    (table[i], std::process::id() as i32)
}

/// A 32 MiB table.
fn table() -> Vec<u64> {
    (0..(32 * MIB / 8)).map(|x| x * 7).collect()
}

#[test]
fn a_32_mib_context_over_10_000_tasks_is_read_once_per_worker() {
    const PROCESSES: usize = 2;
    let pool = TestPool::new(PROCESSES);
    let pids = pool.worker_pids();
    let table = Context::new(table()).unwrap(); // made after the pool
    assert!(table.encoded_len() >= 32 * MIB);
    let before = reads(&pids);
    let out = pool
        .map_chunked(lookup_ctx, (0..10_000).map(|i| (table.clone(), i * 397)), 1)
        .unwrap();
    let after = reads(&pids);
    for (i, (v, _)) in out.iter().enumerate() {
        assert_eq!(*v, (i as u64 * 397) * 7);
    }
    for &pid in &pids {
        let read = after[&pid] - before[&pid];
        let tasks = out.iter().filter(|(_, p)| *p == pid.as_raw()).count() as u64;
        assert!(tasks > 0, "worker {pid} ran none of 10 000 tasks");
        // It read the table once (32 MiB) plus its tasks (well under 1 KiB
        // each); a table sent with every task would be 32 MiB per task.
        assert!(
            read >= 32 * MIB && read < 32 * MIB + tasks * 1024,
            "worker {pid} read {read} bytes for {tasks} tasks"
        );
    }
}

#[test]
fn map_with_sends_its_context_once_per_worker_per_call() {
    const PROCESSES: usize = 2;
    let pool = TestPool::new(PROCESSES);
    let pids = pool.worker_pids();
    let table = table();
    let before = reads(&pids);
    let calls = 3;
    for _ in 0..calls {
        let out = pool
            .map_with(table.as_slice(), lookup, (0..10_000).map(|i| i * 397))
            .unwrap();
        assert_eq!(out[9_999], 9_999 * 397 * 7);
    }
    let after = reads(&pids);
    let total: u64 = pids.iter().map(|p| after[p] - before[p]).sum();
    // At most once per worker per call, plus the items (10 000 small ones
    // per call).
    let bound = calls * PROCESSES as u64 * 32 * MIB + calls * 10_000 * 64;
    assert!(
        total >= 32 * MIB && total <= bound,
        "{total} bytes read by the workers for {calls} calls (bound {bound})"
    );
}

#[test]
fn map_with_and_apply_with_give_the_function_the_context() {
    let pool = TestPool::new(2);
    let words: Vec<String> = ["zero", "one", "two", "three"].map(String::from).to_vec();
    let lens = pool
        .map_with(&words, |w: &Vec<String>, i: usize| w[i].len(), 0..4)
        .unwrap();
    assert_eq!(lens, [4, 3, 3, 5]);
    let joined = pool
        .apply_with(
            &words,
            |w: &Vec<String>, sep: char| w.join(&sep.to_string()),
            '-',
        )
        .unwrap();
    assert_eq!(joined, "zero-one-two-three");
    let h = pool.map_with_async(&words, |w: &Vec<String>, i: usize| w[i].clone(), [3, 0]);
    drop(words); // the borrow ended when the call returned
    assert_eq!(h.get().unwrap(), ["three", "zero"]);
    let err = pool
        .map_with(&10u32, |d: &u32, x: u32| x / (*d - 10), [1])
        .unwrap_err();
    assert_eq!(err.item(), Some(0));
}

#[test]
fn a_context_works_with_starmap_imap_and_across_calls() {
    let pool = TestPool::new(2);
    let offsets = Context::new(vec![100u64, 200, 300]).unwrap();
    let out = pool
        .starmap(
            |o: Context<Vec<u64>>, i: usize, x: u64| o[i] + x,
            (0..3).map(|i| (offsets.clone(), i, 1)),
        )
        .unwrap();
    assert_eq!(out, [101, 201, 301]);
    let mut got: Vec<u64> = pool
        .imap_unordered(
            |(o, i): (Context<Vec<u64>>, usize)| o[i],
            (0..3).map(|i| (offsets.clone(), i)),
            1,
        )
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort();
    assert_eq!(got, [100, 200, 300]);
    assert_eq!(offsets[2], 300, "readable in the parent too");
}

fn wait_for_file(path: String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&path).exists() {
        assert!(Instant::now() < deadline, "the go file never came");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_job_keeps_the_contexts_its_items_carry_until_its_tasks_ran() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go").to_str().unwrap().to_string();
    let pool = TestPool::new(1);
    let blocker = pool.apply_async(wait_for_file, go.clone());
    // The item holds the only handle, and is encoded (then dropped) now;
    // the task runs after the worker is released.
    let h = pool.apply_async(lookup_ctx, (Context::new(vec![1u64, 2, 3]).unwrap(), 1));
    let m = pool.map_async(
        lookup_ctx,
        (0..3).map(|i| (Context::new(vec![i * 10]).unwrap(), 0)),
    );
    std::fs::write(&go, b"").unwrap();
    blocker.get().unwrap();
    assert_eq!(h.get().unwrap().0, 2);
    let firsts: Vec<u64> = m.get().unwrap().into_iter().map(|(v, _)| v).collect();
    assert_eq!(firsts, [0, 10, 20]);
}

#[test]
fn an_imap_keeps_the_contexts_its_items_carry() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go").to_str().unwrap().to_string();
    let pool = TestPool::new(1);
    let blocker = pool.apply_async(wait_for_file, go.clone());
    // The input holds the only handle; the imap pulls, encodes and drops
    // the item before the worker is released.
    let ctx = Context::new(vec![1u64, 2, 3]).unwrap();
    let pulled = std::sync::atomic::AtomicBool::new(false);
    let input = vec![(ctx, 1)]
        .into_iter()
        .inspect(|_| pulled.store(true, std::sync::atomic::Ordering::SeqCst));
    let mut it = pool.imap(lookup_ctx, input, 1);
    let first = std::thread::scope(|s| {
        let t = s.spawn(|| {
            common::wait_for("the item to be pulled", || {
                pulled.load(std::sync::atomic::Ordering::SeqCst)
            });
            std::fs::write(&go, b"").unwrap();
        });
        let first = it.next().unwrap();
        t.join().unwrap();
        first
    });
    blocker.get().unwrap();
    assert_eq!(first.unwrap().0, 2);
}

#[test]
fn imap_with_reads_a_32_mib_context_once_per_worker_over_2000_tasks() {
    const PROCESSES: usize = 2;
    let pool = TestPool::new(PROCESSES);
    let pids = pool.worker_pids();
    let table = table();
    let before = reads(&pids);
    let got: Vec<u64> = pool
        .imap_with(table.as_slice(), lookup, (0..2000).map(|i| i * 397), 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..2000u64).map(|i| i * 397 * 7).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered_with(table.as_slice(), lookup, 0..2000, 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..2000u64).map(|i| i * 7).collect::<Vec<_>>());
    let after = reads(&pids);
    let total: u64 = pids.iter().map(|p| after[p] - before[p]).sum();
    // Two calls, at most once per worker each, plus 4000 small tasks.
    let bound = 2 * PROCESSES as u64 * 32 * MIB + 4000 * 1024;
    assert!(
        total >= 32 * MIB && total <= bound,
        "{total} bytes read by the workers (bound {bound})"
    );
}
