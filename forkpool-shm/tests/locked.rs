//! Locked arrays and values (`LockedArray`, `LockedValue`) across real forked
//! processes, including holders that die.

mod common;

use std::time::{Duration, Instant};

use common::{Outcome, spawn, wait_until};
use forkpool_shm::{LockError, LockedArray, LockedValue, SharedValue, ShmError};

#[test]
fn eight_processes_incrementing_a_locked_counter_give_exactly_80_000() {
    let counter = LockedValue::new(0u64).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            spawn(|| {
                for _ in 0..10_000 {
                    let mut guard = counter.lock().map_err(|e| e.to_string())?;
                    // A plain load and store: increments are lost unless the
                    // lock really excludes the other processes.
                    let seen = *guard;
                    std::hint::black_box(());
                    *guard = seen + 1;
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    assert_eq!(*counter.lock().unwrap(), 80_000);
}

#[test]
fn a_locked_array_keeps_multi_element_updates_whole() {
    // Each update writes one value to every element; a reader under the lock
    // must never see a mix.
    let array = LockedArray::<u32>::new(&[16, 256]).unwrap();
    let children: Vec<_> = (1..=4u32)
        .map(|id| {
            let array = array.clone();
            spawn(move || {
                for round in 0..200 {
                    let mut guard = array.lock().map_err(|e| e.to_string())?;
                    let first = guard[0];
                    ensure!(
                        guard.iter().all(|&x| x == first),
                        "torn update seen in round {round}"
                    );
                    guard.fill(id);
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    let guard = array.lock().unwrap();
    assert!((1..=4).contains(&guard[0]));
    assert!(guard.iter().all(|&x| x == guard[0]));
}

/// Starts a child that takes the lock, writes `7` into row 0, reports that it
/// holds the lock, and waits to be killed.
fn holder(array: &LockedArray<i64>, holding: &SharedValue<u8>) -> common::Child {
    spawn(|| {
        let mut guard = array.lock().map_err(|e| e.to_string())?;
        guard.row_mut(0).fill(7);
        holding.set(1);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

#[test]
fn a_process_killed_holding_the_lock_is_reported_by_the_next_lock_with_the_data_intact() {
    let array = LockedArray::<i64>::new(&[2, 100]).unwrap();
    let holding = SharedValue::new(0u8).unwrap();
    let child = holder(&array, &holding);
    let pid = child.pid().as_raw();
    wait_until("the child to hold the lock", || holding.get() == 1);
    assert!(matches!(
        array.try_lock(),
        Err(LockError::Failed(ShmError::WouldBlock))
    ));
    child.kill();
    assert_eq!(
        child.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );

    let started = Instant::now();
    match array.lock_timeout(Duration::from_secs(30)) {
        Err(LockError::OwnerDied(died)) => {
            assert_eq!(died.pid(), Some(pid));
            assert!(!died.panicked());
            let guard = died.into_inner();
            assert!(
                guard.row(0).iter().all(|&x| x == 7),
                "the dead holder's writes stay"
            );
            assert!(guard.row(1).iter().all(|&x| x == 0));
        }
        Err(LockError::Failed(e)) => panic!("lock failed: {e}"),
        Ok(_) => panic!("the owner's death was not reported"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting for a dead holder"
    );

    // Poisoning is sticky, like std's, until cleared.
    assert!(array.is_poisoned());
    let err = array.lock().map(drop).unwrap_err();
    assert!(err.to_string().contains(&format!("pid {pid}")), "{err}");
    let as_shm: ShmError = err.into();
    assert!(matches!(as_shm, ShmError::OwnerDied { pid: Some(p) } if p == pid));
    array.clear_poison();
    assert!(!array.is_poisoned());
    let guard = array.lock().expect("clean after clear_poison");
    assert_eq!(guard[0], 7);
}

#[test]
fn a_waiter_blocked_on_the_lock_is_woken_when_the_holder_is_killed() {
    let array = LockedArray::<i64>::new(&[2, 100]).unwrap();
    let holding = SharedValue::new(0u8).unwrap();
    let waiting = SharedValue::new(0u8).unwrap();
    let first = holder(&array, &holding);
    wait_until("the first child to hold the lock", || holding.get() == 1);
    // The second child blocks in lock(); it must learn of the death, not hang.
    let second = spawn(|| {
        waiting.set(1);
        match array.lock() {
            Err(LockError::OwnerDied(died)) => {
                let guard = died.into_inner();
                ensure!(guard[0] == 7, "data lost: {}", guard[0]);
                Ok(())
            }
            Ok(_) => Err("the death of the holder was not reported".into()),
            Err(LockError::Failed(e)) => Err(e.to_string()),
        }
    });
    wait_until("the second child to wait", || waiting.get() == 1);
    std::thread::sleep(Duration::from_millis(50)); // let it block in the kernel
    first.kill();
    assert_eq!(
        first.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );
    second.join();
}

#[test]
fn a_holder_that_panics_poisons_the_lock() {
    let value = LockedValue::new(1.5f64).unwrap();
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let mut guard = value.lock().unwrap();
            *guard = 2.5;
            panic!("worker failed half-way");
        });
        assert!(handle.join().is_err());
    });
    match value.lock() {
        Err(LockError::OwnerDied(died)) => {
            assert!(died.panicked());
            assert_eq!(died.pid(), Some(std::process::id() as i32));
            assert_eq!(*died.into_inner(), 2.5);
        }
        other => panic!("expected poisoning, got {:?}", other.map(|g| *g)),
    }
}

#[test]
fn try_lock_and_lock_timeout_see_a_lock_held_by_another_process() {
    let array = LockedArray::<u8>::new(&[1]).unwrap();
    let holding = SharedValue::new(0u8).unwrap();
    let release = SharedValue::new(0u8).unwrap();
    let child = spawn(|| {
        let guard = array.lock().map_err(|e| e.to_string())?;
        holding.set(1);
        wait_until("the parent's go", || release.get() == 1);
        drop(guard);
        Ok(())
    });
    wait_until("the child to hold the lock", || holding.get() == 1);
    assert!(matches!(
        array.try_lock(),
        Err(LockError::Failed(ShmError::WouldBlock))
    ));
    let t = Duration::from_millis(50);
    let started = Instant::now();
    match array.lock_timeout(t) {
        Err(LockError::Failed(ShmError::LockTimeout(d))) => assert_eq!(d, t),
        other => panic!("expected a timeout, got {:?}", other.map(drop)),
    }
    assert!(started.elapsed() >= t);
    release.set(1);
    child.join();
    assert!(
        array.try_lock().is_ok(),
        "free again after the child let go"
    );
}

#[test]
fn locking_twice_on_one_thread_is_an_error_not_a_deadlock() {
    let array = LockedArray::<u8>::new(&[1]).unwrap();
    let _held = array.lock().unwrap();
    assert!(matches!(
        array.lock().map(drop),
        Err(LockError::Failed(ShmError::WouldDeadlock))
    ));
}

#[test]
fn views_under_the_lock_are_ordinary_ndarray_views() {
    use ndarray::Ix2;
    let array = LockedArray::<f64>::new(&[3, 4]).unwrap();
    let child = spawn(|| {
        let mut guard = array.lock().map_err(|e| e.to_string())?;
        let mut view = guard.view_mut().into_dimensionality::<Ix2>().unwrap();
        for ((i, j), x) in view.indexed_iter_mut() {
            *x = (i * 10 + j) as f64;
        }
        Ok(())
    });
    child.join();
    let guard = array.lock().unwrap();
    let view = guard.view().into_dimensionality::<Ix2>().unwrap();
    assert_eq!(view[[2, 3]], 23.0);
    assert_eq!(view.column(0).to_vec(), [0.0, 10.0, 20.0]);
    assert_eq!(guard.rows(1..2), [10.0, 11.0, 12.0, 13.0]);
}
