//! Descriptor and process hygiene: after every way a pool can end, the
//! parent holds exactly the descriptors it held before, and no process of
//! the pool remains. Workers hold only their own two pipe ends (plus what
//! the program had open itself), never another pool's.
//!
//! The tests of this file take one lock, so the descriptor counts of the
//! process are not disturbed by a concurrent test.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use common::{Procs, fd_count};
use forkpool::{Error, Pool};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn double(x: u64) -> u64 {
    x * 2
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// This process's descriptors: number to target (but for the listing's own).
fn fds() -> BTreeMap<i32, String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            // The directory being listed is not one of the process's own.
            (!target.starts_with("/proc/")).then_some((fd, target))
        })
        .collect()
}

/// The descriptors of the worker that runs it.
fn worker_fds(_: ()) -> BTreeMap<i32, String> {
    fds()
}

/// Runs `scenario` and checks the parent's descriptors and the pool's
/// processes are as before.
fn check(name: &str, scenario: impl FnOnce() -> Procs) {
    let before = fds();
    let procs = scenario();
    procs.assert_gone();
    let after = fds();
    assert_eq!(before, after, "{name}: descriptors leaked or closed");
}

#[test]
fn no_leaks_after_normal_use_and_drop() {
    let _g = serial();
    check("map then drop", || {
        let pool = Pool::new(2).unwrap();
        pool.map(double, 0..1000).unwrap();
        Procs::of(&pool)
    });
    check("close and join", || {
        let pool = Pool::new(2).unwrap();
        let h = pool.map_async(double, 0..1000);
        pool.close();
        pool.join().unwrap();
        h.get().unwrap();
        Procs::of(&pool)
    });
    check("max_tasks_per_child", || {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .build()
            .unwrap();
        let mut procs = Procs::of(&pool);
        for _ in 0..5 {
            pool.map_chunked(double, 0..8, 1).unwrap();
            procs.add(&pool);
        }
        procs
    });
}

#[test]
fn no_leaks_after_faults() {
    let _g = serial();
    check("a panic", || {
        let pool = Pool::new(2).unwrap();
        let _ = pool.map(|x: u64| if x == 5 { panic!("five") } else { x }, 0..10);
        Procs::of(&pool)
    });
    check("a killed worker", || {
        let pool = Pool::new(2).unwrap();
        let mut procs = Procs::of(&pool);
        common::kill(pool.worker_pids()[0], libc::SIGKILL);
        let _ = pool.map_chunked(sleep_ms, [20u64; 10], 1);
        common::wait_for("the replacement", || pool.worker_pids().len() == 2);
        procs.add(&pool);
        pool.map(double, 0..10).unwrap();
        procs
    });
    check("terminate mid-map", || {
        let pool = Pool::new(2).unwrap();
        let procs = Procs::of(&pool);
        let h = pool.map_async(sleep_ms, [10_000u64; 4]);
        std::thread::sleep(Duration::from_millis(50));
        pool.terminate();
        assert!(matches!(h.get(), Err(Error::Terminated)));
        procs
    });
    let before = fds();
    let err = Pool::builder()
        .processes(2)
        .initializer(|| panic!("no"))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Initializer { .. }));
    assert_eq!(before, fds(), "a failed build leaked descriptors");
    check("a caller that panics", || {
        let procs = std::panic::catch_unwind(|| {
            let pool = Pool::new(2).unwrap();
            let procs = Procs::of(&pool);
            std::panic::panic_any(procs);
        })
        .unwrap_err();
        *procs.downcast::<Procs>().unwrap()
    });
}

#[test]
fn workers_hold_only_their_own_pipes() {
    let _g = serial();
    let before = fds();
    let a = Pool::new(1).unwrap();
    let b = Pool::new(1).unwrap();
    let mut procs = Procs::of(&a);
    procs.add(&b);
    // What the parent holds for the two pools.
    let parent_pool_fds: BTreeMap<i32, String> = fds()
        .into_iter()
        .filter(|(fd, t)| before.get(fd) != Some(t))
        .collect();
    assert!(!parent_pool_fds.is_empty());
    for pool in [&a, &b] {
        let theirs = pool.apply(worker_fds, ()).unwrap();
        let own: BTreeMap<i32, String> = theirs
            .iter()
            .filter(|(fd, t)| before.get(fd) != Some(t))
            .map(|(fd, t)| (*fd, t.clone()))
            .collect();
        // Exactly two pipes of its own (task read end, result write end)
        // and its end of the side channel for buffers...
        assert_eq!(own.len(), 3, "unexpected descriptors in a worker: {own:?}");
        let pipes = own.values().filter(|t| t.starts_with("pipe:")).count();
        let sockets = own.values().filter(|t| t.starts_with("socket:")).count();
        assert_eq!((pipes, sockets), (2, 1), "{own:?}");
        // ...whose pipes' other ends the parent holds; and none of the
        // parent's pool descriptors (the control sockets, the other pool's
        // pipes and side channel: a socket's two ends differ).
        let parent_targets: Vec<&String> = parent_pool_fds.values().collect();
        for t in own.values() {
            if t.starts_with("socket:") {
                assert!(!parent_targets.contains(&t), "{t} is the parent's");
                continue;
            }
            assert!(
                parent_targets.contains(&t),
                "{t} is not one of the pool's pipes"
            );
        }
        let other_pool_pipes = parent_pool_fds
            .values()
            .filter(|t| t.starts_with("pipe:") && !own.values().any(|o| o == *t))
            .count();
        assert_eq!(other_pool_pipes, 2, "{parent_pool_fds:?}");
    }
    drop(a);
    drop(b);
    procs.assert_gone();
    assert_eq!(before, fds());
}

#[test]
fn descriptor_count_is_stable_over_many_pools() {
    let _g = serial();
    let n = fd_count();
    for _ in 0..20 {
        let pool = Pool::new(2).unwrap();
        let procs = Procs::of(&pool);
        pool.apply(double, 1).unwrap();
        drop(pool);
        procs.assert_gone();
    }
    assert_eq!(fd_count(), n);
}
