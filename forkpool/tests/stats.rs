//! `Pool::stats` and the peak memory in `Error::WorkerDied`, with real
//! workers: counts compared with what the tasks themselves reported.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestPool;
use forkpool::{Error, ExitCause, Pool};

fn pid_of(_: u64) -> i32 {
    std::process::id() as i32
}

fn sleep_then_pid(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id() as i32
}

/// Holds `mib` MiB resident (every page written), then frees it.
fn touch_mib(mib: usize) -> i32 {
    let v = vec![1u8; mib << 20];
    std::hint::black_box(&v);
    std::process::id() as i32
}

/// Holds `mib` MiB resident, then is killed by SIGKILL (as by the OOM
/// killer).
fn touch_mib_then_die(mib: usize) {
    let v = vec![1u8; mib << 20];
    std::hint::black_box(&v);
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL cannot be caught");
}

#[test]
fn stats_count_the_tasks_and_items_each_worker_pid_returned() {
    let pool = TestPool::new(2);
    let pids = pool.map_chunked(pid_of, 0..1000, 10).unwrap();
    let mut items_by_pid: HashMap<i32, u64> = HashMap::new();
    for p in pids {
        *items_by_pid.entry(p).or_default() += 1;
    }
    let s = pool.stats();
    assert_eq!(s.workers.len(), 2);
    assert!(s.exited.is_empty());
    for w in &s.workers {
        assert!(w.alive);
        let items = items_by_pid.get(&w.pid.as_raw()).copied().unwrap_or(0);
        assert_eq!(w.items, items, "worker {}", w.pid);
        assert_eq!(w.tasks * 10, items, "worker {}", w.pid);
        assert!(w.peak_rss > 0, "worker {}: no peak RSS", w.pid);
    }
    assert_eq!((s.tasks(), s.items()), (100, 1000));
}

#[test]
fn busy_time_covers_the_time_tasks_slept() {
    let pool = TestPool::new(2);
    let pids = pool.map_chunked(sleep_then_pid, vec![5u64; 40], 1).unwrap();
    let s = pool.stats();
    for w in &s.workers {
        let tasks = pids.iter().filter(|&&p| p == w.pid.as_raw()).count() as u64;
        assert_eq!(w.tasks, tasks);
        // A sleep never returns early: a lower bound, not a timing.
        assert!(
            w.busy >= Duration::from_millis(5 * tasks),
            "worker {}: {} tasks of 5 ms, busy {:?}",
            w.pid,
            tasks,
            w.busy
        );
    }
}

#[test]
fn peak_rss_shows_what_a_worker_held_after_it_freed_it() {
    let pool = TestPool::new(2);
    let pid = pool.apply(touch_mib, 96).unwrap();
    let s = pool.stats();
    let w = s.workers.iter().find(|w| w.pid.as_raw() == pid).unwrap();
    assert!(w.peak_rss >= 96 << 20, "peak RSS {} < 96 MiB", w.peak_rss);
    assert!(s.peak_rss() >= 96 << 20);
}

#[test]
fn a_worker_killed_while_holding_memory_reports_its_peak_rss() {
    let mut pool = TestPool::new(2);
    let err = pool.apply(touch_mib_then_die, 128).unwrap_err();
    let (pid, peak) = match &err {
        Error::WorkerDied {
            pid,
            cause: ExitCause::Signaled { signal, .. },
            peak_rss,
            ..
        } => {
            assert_eq!(*signal, libc::SIGKILL);
            (*pid, peak_rss.expect("the zygote's wait4 knows the peak"))
        }
        other => panic!("expected WorkerDied by SIGKILL, got {other:?}"),
    };
    assert!(peak >= 128 << 20, "peak RSS {peak} < 128 MiB");
    let msg = err.to_string();
    assert!(msg.contains("peak memory (RSS) was"), "{msg}");
    pool.record();
    let s = pool.stats();
    let dead = s
        .exited
        .iter()
        .find(|w| w.pid == pid)
        .expect("listed as exited");
    assert!(!dead.alive);
    assert_eq!(dead.peak_rss, peak);
    assert_eq!(dead.tasks, 0, "its one task never returned");
}

#[test]
fn recycled_workers_keep_their_counts_in_exited() {
    let mut pool = TestPool::build(|| Pool::builder().processes(2).max_tasks_per_child(2).build());
    let pids = pool.map_chunked(pid_of, 0..12, 1).unwrap();
    common::wait_for("the recycled workers to be reported", || {
        pool.stats().exited.len() >= 4
    });
    pool.record();
    let s = pool.stats();
    assert_eq!(s.tasks(), 12, "{s:?}");
    for w in &s.exited {
        assert!(!w.alive);
        assert_eq!(w.tasks, 2, "{w:?}");
        assert_eq!(
            pids.iter().filter(|&&p| p == w.pid.as_raw()).count(),
            2,
            "worker {} counted differently",
            w.pid
        );
        assert!(w.peak_rss > 0, "{w:?}");
    }
}
