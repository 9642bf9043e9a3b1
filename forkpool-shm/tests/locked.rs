//! Locked arrays and values (`SharedArray<T, Locked>`, 0-d for a value) across real forked
//! processes, including holders that die.

mod common;

use std::time::{Duration, Instant};

use common::{Outcome, spawn, wait_until};
use forkpool_shm::{LockError, Locked, SharedArray, ShmError};

#[test]
fn eight_processes_incrementing_a_locked_counter_give_exactly_80_000() {
    let counter = SharedArray::<_, Locked>::full(&[], 0u64).unwrap();
    common::in_children_times(8, 10_000, || {
        counter.with_lock(|count| {
            // A plain load and store: increments are lost unless the lock
            // really excludes the other processes.
            let seen = count[0];
            std::hint::black_box(());
            count[0] = seen + 1;
        })
    });
    assert_eq!(counter.with_lock(|count| count[0]).unwrap(), 80_000);
}

#[test]
fn a_locked_array_keeps_multi_element_updates_whole() {
    // Each update writes one value to every element; a reader under the lock
    // must never see a mix.
    let array = SharedArray::<u32, Locked>::new(&[16, 256]).unwrap();
    let children: Vec<_> = (1..=4u32)
        .map(|id| {
            let array = array.clone();
            spawn(move || {
                for round in 0..200 {
                    array
                        .with_lock(|data| {
                            let first = data[0];
                            ensure!(
                                data.iter().all(|&x| x == first),
                                "torn update seen in round {round}"
                            );
                            data.fill(id);
                            Ok(())
                        })
                        .map_err(|e| e.to_string())??;
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    let data = array.with_lock(|data| data.to_vec()).unwrap();
    assert!((1..=4).contains(&data[0]));
    assert!(data.iter().all(|&x| x == data[0]));
}

/// Starts a child that takes the lock, writes `7` into row 0, reports that it
/// holds the lock, and waits to be killed.
fn holder(array: &SharedArray<i64, Locked>, holding: &SharedArray<u8>) -> common::Child {
    spawn(|| {
        array
            .with_lock(|data| {
                data.row_mut(0).fill(7);
                holding.set(0, 1);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_process_killed_holding_the_lock_is_reported_by_the_next_lock_with_the_data_intact() {
    let array = SharedArray::<i64, Locked>::new(&[2, 100]).unwrap();
    let holding = SharedArray::<_>::full(&[], 0u8).unwrap();
    let child = holder(&array, &holding);
    let pid = child.pid();
    wait_until("the child to hold the lock", || holding.get(0) == 1);
    assert!(matches!(
        array.try_with_lock(|_| ()),
        Err(LockError::Failed(ShmError::WouldBlock))
    ));
    child.kill();
    assert_eq!(
        child.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );

    let started = Instant::now();
    match array.with_lock_timeout(Duration::from_secs(30), |data| {
        (data.row(0).to_vec(), data.row(1).to_vec())
    }) {
        Err(LockError::OwnerDied(died)) => {
            assert_eq!(died.pid(), Some(pid));
            assert!(!died.panicked());
            let (row0, row1) = died.into_inner();
            assert!(
                row0.iter().all(|&x| x == 7),
                "the dead holder's writes stay"
            );
            assert!(row1.iter().all(|&x| x == 0));
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
    let err = array.with_lock(|_| ()).unwrap_err();
    assert!(err.to_string().contains(&format!("pid {pid}")), "{err}");
    let as_shm: ShmError = err.into();
    assert!(matches!(as_shm, ShmError::OwnerDied { pid: Some(p) } if p == pid));
    array.clear_poison();
    assert!(!array.is_poisoned());
    let first = array
        .with_lock(|data| data[0])
        .expect("clean after clear_poison");
    assert_eq!(first, 7);
}

#[test]
fn a_waiter_blocked_on_the_lock_is_woken_when_the_holder_is_killed() {
    let array = SharedArray::<i64, Locked>::new(&[2, 100]).unwrap();
    let holding = SharedArray::<_>::full(&[], 0u8).unwrap();
    let waiting = SharedArray::<_>::full(&[], 0u8).unwrap();
    let first = holder(&array, &holding);
    wait_until("the first child to hold the lock", || holding.get(0) == 1);
    // The second child blocks in lock(); it must learn of the death, not hang.
    let second = spawn(|| {
        waiting.set(0, 1);
        match array.with_lock(|data| data[0]) {
            Err(LockError::OwnerDied(died)) => {
                let first = died.into_inner();
                ensure!(first == 7, "data lost: {first}");
                Ok(())
            }
            Ok(_) => Err("the death of the holder was not reported".into()),
            Err(LockError::Failed(e)) => Err(e.to_string()),
        }
    });
    wait_until("the second child to wait", || waiting.get(0) == 1);
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
    let value = SharedArray::<_, Locked>::full(&[], 1.5f64).unwrap();
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let _ = value.with_lock(|value| {
                value[0] = 2.5;
                panic!("worker failed half-way");
            });
        });
        assert!(handle.join().is_err());
    });
    match value.with_lock(|value| value[0]) {
        Err(LockError::OwnerDied(died)) => {
            assert!(died.panicked());
            assert_eq!(died.pid(), Some(forkpool_shm::Pid::this()));
            assert_eq!(died.into_inner(), 2.5);
        }
        other => panic!("expected poisoning, got {other:?}"),
    }
}

#[test]
fn try_lock_and_lock_timeout_see_a_lock_held_by_another_process() {
    let array = SharedArray::<u8, Locked>::new(&[1]).unwrap();
    let holding = SharedArray::<_>::full(&[], 0u8).unwrap();
    let release = SharedArray::<_>::full(&[], 0u8).unwrap();
    let child = spawn(|| {
        array
            .with_lock(|_| {
                holding.set(0, 1);
                wait_until("the parent's go", || release.get(0) == 1);
            })
            .map_err(|e| e.to_string())
    });
    wait_until("the child to hold the lock", || holding.get(0) == 1);
    assert!(matches!(
        array.try_with_lock(|_| ()),
        Err(LockError::Failed(ShmError::WouldBlock))
    ));
    let t = Duration::from_millis(50);
    let started = Instant::now();
    match array.with_lock_timeout(t, |_| ()) {
        Err(LockError::Failed(ShmError::LockTimeout(d))) => assert_eq!(d, t),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= t);
    release.set(0, 1);
    child.join();
    assert!(
        array.try_with_lock(|_| ()).is_ok(),
        "free again after the child let go"
    );
}

#[test]
fn locking_twice_on_one_thread_is_an_error_not_a_deadlock() {
    let array = SharedArray::<u8, Locked>::new(&[1]).unwrap();
    let again = array.with_lock(|_| array.with_lock(|_| ())).unwrap();
    assert!(matches!(
        again,
        Err(LockError::Failed(ShmError::WouldDeadlock))
    ));
}

#[test]
fn views_under_the_lock_are_ordinary_ndarray_views() {
    use ndarray::Ix2;
    let array = SharedArray::<f64, Locked>::new(&[3, 4]).unwrap();
    let child = spawn(|| {
        array
            .with_lock(|data| {
                let mut view = data.view_mut().into_dimensionality::<Ix2>().unwrap();
                for ((i, j), x) in view.indexed_iter_mut() {
                    *x = (i * 10 + j) as f64;
                }
            })
            .map_err(|e| e.to_string())
    });
    child.join();
    array
        .with_lock(|data| {
            let view = data.view().into_dimensionality::<Ix2>().unwrap();
            assert_eq!(view[[2, 3]], 23.0);
            assert_eq!(view.column(0).to_vec(), [0.0, 10.0, 20.0]);
            assert_eq!(data.row(1), [10.0, 11.0, 12.0, 13.0]);
        })
        .unwrap();
}
