//! Pools in a multithreaded parent: built on short-lived threads, used
//! while other threads allocate and print, several at once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Procs, TestPool};
use forkpool::Pid;

fn square(x: u64) -> u64 {
    x * x
}

fn my_pid(_: ()) -> i32 {
    std::process::id() as i32
}

/// Starts threads that allocate and print until `stop` is set.
fn busy_threads(n: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    (0..n)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut total = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<u64> = (0..1000).map(|x| x ^ i).collect();
                    total = total.wrapping_add(v.iter().sum::<u64>());
                    println!("noise thread {t} round {i}: {}", v.len());
                    eprintln!("noise thread {t} round {i}");
                    i += 1;
                }
                total
            })
        })
        .collect()
}

#[test]
fn a_pool_built_on_a_spawned_thread_amid_allocating_printing_threads() {
    let stop = Arc::new(AtomicBool::new(false));
    let noise = busy_threads(3, stop.clone());
    let (pool, procs) = std::thread::spawn(|| {
        let pool = TestPool::new(2);
        // Used on the thread that built it...
        assert_eq!(pool.map(square, 0..1000).unwrap()[999], 999 * 999);
        let procs = Procs::of(&pool);
        (pool, procs)
    })
    .join()
    .unwrap();
    // ...and after that thread exited: the workers did not die with it.
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    for _ in 0..20 {
        assert_eq!(pool.map(square, 0..100).unwrap()[10], 100);
    }
    let served: HashSet<i32> = pool
        .map_chunked(my_pid, vec![(); 100], 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        served.iter().all(|&p| pids.contains(&Pid::from_raw(p))),
        "{served:?} vs {pids:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for h in noise {
        h.join().unwrap();
    }
    drop(pool);
    procs.assert_gone();
}

#[test]
fn two_pools_at_once_from_two_threads() {
    let a = TestPool::new(2);
    let b = TestPool::new(2);
    let mut procs = Procs::of(&a);
    procs.add(&b);
    let pa: HashSet<Pid> = a.worker_pids().into_iter().collect();
    let pb: HashSet<Pid> = b.worker_pids().into_iter().collect();
    assert!(pa.is_disjoint(&pb));
    std::thread::scope(|s| {
        let ha = s.spawn(|| {
            (0..50)
                .map(|_| a.map(square, 0..200).unwrap()[199])
                .sum::<u64>()
        });
        let hb = s.spawn(|| {
            (0..50)
                .map(|_| {
                    b.imap_unordered(square, 0..200, 4)
                        .map(Result::unwrap)
                        .sum::<u64>()
                })
                .sum::<u64>()
        });
        assert_eq!(ha.join().unwrap(), 50 * 199 * 199);
        assert_eq!(
            hb.join().unwrap(),
            50 * (0..200u64).map(|x| x * x).sum::<u64>()
        );
    });
    let served: HashSet<Pid> = b
        .map_chunked(my_pid, vec![(); 40], 1)
        .unwrap()
        .into_iter()
        .map(Pid::from_raw)
        .collect();
    assert!(served.is_subset(&pb));
    // Dropping one leaves the other working.
    drop(a);
    assert_eq!(b.apply(square, 12).unwrap(), 144);
    drop(b);
    procs.assert_gone();
}

#[test]
fn many_pools_built_concurrently() {
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let pool = TestPool::new(2);
                let procs = Procs::of(&pool);
                let out = pool.map(square, 0..(100 * (t + 1))).unwrap();
                assert_eq!(out.len() as u64, 100 * (t + 1));
                drop(pool);
                procs
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().assert_gone();
    }
}

#[test]
fn a_pool_moved_between_threads_and_dropped_on_another() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let h = pool.map_async(square, 0..10);
    let pool = std::thread::spawn(move || {
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
        pool
    })
    .join()
    .unwrap();
    assert_eq!(h.get().unwrap()[9], 81);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        drop(pool);
    })
    .join()
    .unwrap();
    procs.assert_gone();
}
