//! Row claims (`SharedArray<T, Partitioned>`) across real forked processes.

mod common;

use std::ops::Range;
use std::sync::atomic::Ordering;

use common::{Outcome, join_all, spawn, spawn_each, wait_until};
use forkpool_shm::{Partitioned, Pid, SharedArray, ShmError};

/// The rows held and their holder's pid if `got` is a `RowsBusy` refusal;
/// otherwise what it was, in words.
fn busy<R: std::fmt::Debug>(got: Result<R, ShmError>) -> Result<(Range<usize>, Pid), String> {
    match got {
        Err(ShmError::RowsBusy { held, pid, .. }) => Ok((held, pid)),
        other => Err(format!("expected RowsBusy, got {other:?}")),
    }
}

/// Runs `in_child` in a child forked while this process holds `rows` of
/// `array` for writing, and waits for it; whatever the child did, the last
/// of the rows is still this process's afterwards.
fn while_holding<T: forkpool_shm::Element>(
    array: &SharedArray<T, Partitioned>,
    rows: Range<usize>,
    in_child: impl FnOnce() -> Result<(), String>,
) {
    array
        .with_rows_mut(rows.clone(), |_| {
            spawn(in_child).join();
            let (_, holder) = busy(array.with_rows_mut(rows.end - 1..rows.end, |_| ())).unwrap();
            assert_eq!(holder, Pid::this());
        })
        .unwrap();
}

#[test]
fn workers_fill_their_claimed_rows_with_ordinary_slices_and_views() {
    let array = SharedArray::<f64, Partitioned>::new(&[40, 500]).unwrap();
    join_all(spawn_each(array.row_blocks(4), |rows| {
        array
            .with_rows_mut(rows.clone(), |mine| {
                mine.prefault().map_err(|e| e.to_string())?;
                for row in rows {
                    for (j, x) in mine.row_mut(row).iter_mut().enumerate() {
                        *x = (row * 1000 + j) as f64;
                    }
                }
                mine.view_mut().map_inplace(|x| *x += 0.5);
                Ok(())
            })
            .map_err(|e| e.to_string())?
    }));

    array
        .with_rows(0..40, |all| {
            for row in 0..40 {
                for (j, &x) in all.row(row).iter().enumerate() {
                    assert_eq!(x, (row * 1000 + j) as f64 + 0.5);
                }
            }
        })
        .unwrap();
}

#[test]
fn an_overlapping_claim_in_another_process_is_refused_with_the_holders_pid() {
    let array = SharedArray::<u8, Partitioned>::new(&[10, 10]).unwrap();
    let me = Pid::this();
    while_holding(&array, 0..5, || {
        let (held, pid) = busy(array.with_rows_mut(4..6, |rows| rows.range()))?;
        ensure!(held == (0..5), "held {held:?}");
        ensure!(pid == me, "pid {pid}");
        ensure!(
            array.with_rows(0..1, |_| ()).is_err(),
            "readers are excluded too"
        );
        array
            .with_rows_mut(5..10, |other| other.fill(9))
            .map_err(|e| e.to_string())
    });
    assert_eq!(
        array.with_rows(5..10, |rows| rows.to_vec()).unwrap(),
        [9; 50]
    );
}

#[test]
fn readers_share_rows_across_processes_and_exclude_writers() {
    let array = SharedArray::<i32, Partitioned>::new(&[4, 4]).unwrap();
    array.with_rows_mut(0..4, |rows| rows.fill(3)).unwrap();
    let sum = array
        .with_rows(0..4, |reading| {
            let child = spawn(|| {
                let also = array
                    .with_rows(1..3, |also| also.to_vec())
                    .map_err(|e| e.to_string())?;
                ensure!(also.iter().all(|&x| x == 3), "reader sees {also:?}");
                busy(array.with_rows_mut(2..3, |_| ()))
                    .map_err(|e| format!("a writer got in while rows were being read: {e}"))?;
                Ok(())
            });
            child.join();
            reading.iter().sum::<i32>()
        })
        .unwrap();
    assert_eq!(sum, 48);
}

#[test]
fn a_claim_left_by_a_killed_process_is_cleared() {
    let array = SharedArray::<u8, Partitioned>::new(&[8, 8]).unwrap();
    let claimed = SharedArray::<_>::full(&[], 0u8).unwrap();
    let child = spawn(|| {
        array
            .with_rows_mut(0..8, |rows| {
                rows.fill(1);
                claimed.store(0, 1, Ordering::Release);
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            })
            .map_err(|e| e.to_string())
    });
    wait_until("the child's claim", || {
        claimed.load(0, Ordering::Acquire) == 1
    });
    assert_eq!(
        busy(array.with_rows_mut(3..4, |_| ())).unwrap().1,
        child.pid()
    );
    child.kill();
    assert_eq!(
        child.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );
    let row = array
        .with_rows_mut(3..4, |rows| rows.to_vec())
        .expect("the dead process's claim is stale");
    assert_eq!(row, [1; 8]);
}

/// Claims fail closed (issue 14): when a claim's holder cannot be checked
/// (here no file descriptor is left to read `/proc/<pid>/stat`), the claim
/// stands. The old code took the failed read for a dead holder, cleared the
/// claim and handed the same rows out a second time, as two `&mut [T]`.
#[test]
fn a_claim_whose_holder_cannot_be_checked_is_not_taken_over() {
    use nix::sys::resource::{Resource, setrlimit};
    let array = SharedArray::<u32, Partitioned>::new(&[8, 16]).unwrap();
    let parent = Pid::this();
    while_holding(&array, 0..4, || {
        setrlimit(Resource::RLIMIT_NOFILE, 8, 8).map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            files.push(file);
        }
        ensure!(
            std::fs::read_to_string("/proc/self/stat").is_err(),
            "/proc is still readable"
        );
        // Another process's claim.
        let (_, pid) = busy(array.with_rows_mut(2..3, |_| ()))
            .map_err(|e| format!("the parent's rows 2..3 were handed out: {e}"))?;
        ensure!(pid == parent, "rows 2..3 held by {pid}, not the parent");
        // This process's own claim.
        let twice = array
            .with_rows_mut(4..6, |_| array.with_rows_mut(5..6, |_| ()))
            .map_err(|e| e.to_string())?;
        busy(twice).map_err(|e| format!("rows 5..6 were handed out twice: {e}"))?;
        drop(files);
        Ok(())
    });
    assert!(array.with_rows_mut(0..8, |_| ()).is_ok());
}

/// A claim belongs to the process that made it: a child forked while the
/// claim is held (inside the closure) and leaving the closure there (its
/// copy of the claim dropped) does not release the parent's rows.
#[test]
fn a_child_forked_inside_the_closure_does_not_release_the_parents_claim() {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    let array = SharedArray::<u8, Partitioned>::new(&[4, 4]).unwrap();
    let in_parent = array
        .with_rows_mut(2..4, |_| {
            // SAFETY: the child only leaves the closure (dropping its copy of
            // the claim, which takes no lock) and then `_exit`s.
            let child = match unsafe { fork() }.expect("fork") {
                ForkResult::Child => return false,
                ForkResult::Parent { child } => child,
            };
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            // The child's copy of the claim is gone; the parent's stands.
            assert_eq!(
                busy(array.with_rows_mut(3..4, |_| ())).unwrap().1,
                Pid::this()
            );
            true
        })
        .unwrap();
    if !in_parent {
        // SAFETY: ends the child without running the parent's exit handlers
        // or returning into the test harness.
        unsafe { libc::_exit(0) };
    }
    assert!(array.with_rows_mut(2..4, |_| ()).is_ok());
}
