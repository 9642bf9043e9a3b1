//! Row claims (`PartitionedArray`) across real forked processes.

mod common;

use std::sync::atomic::Ordering;

use common::{Outcome, spawn, wait_until};
use forkpool_shm::{PartitionedArray, SharedValue, ShmError};

#[test]
fn workers_fill_their_claimed_rows_with_ordinary_slices_and_views() {
    let array = PartitionedArray::<f64>::new(&[40, 500]).unwrap();
    let children: Vec<_> = array
        .row_blocks(4)
        .into_iter()
        .map(|rows| {
            spawn(|| {
                let mut mine = array.claim_rows(rows.clone()).map_err(|e| e.to_string())?;
                mine.prefault().map_err(|e| e.to_string())?;
                for row in rows {
                    for (j, x) in mine.row_mut(row).iter_mut().enumerate() {
                        *x = (row * 1000 + j) as f64;
                    }
                }
                mine.view_mut().map_inplace(|x| *x += 0.5);
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);

    let all = array.read_rows(0..40).unwrap();
    for row in 0..40 {
        for (j, &x) in all.row(row).iter().enumerate() {
            assert_eq!(x, (row * 1000 + j) as f64 + 0.5);
        }
    }
}

#[test]
fn an_overlapping_claim_in_another_process_is_refused_with_the_holders_pid() {
    let array = PartitionedArray::<u8>::new(&[10, 10]).unwrap();
    let mine = array.claim_rows(0..5).unwrap();
    let me = std::process::id() as i32;
    let child = spawn(|| {
        match array.claim_rows(4..6) {
            Err(ShmError::RowsBusy { held, pid, .. }) => {
                ensure!(held == (0..5), "held {held:?}");
                ensure!(pid == me, "pid {pid}");
            }
            other => {
                return Err(format!(
                    "expected RowsBusy, got {:?}",
                    other.map(|r| r.rows())
                ));
            }
        }
        ensure!(array.read_rows(0..1).is_err(), "readers are excluded too");
        let mut other = array.claim_rows(5..10).map_err(|e| e.to_string())?;
        other.fill(9);
        Ok(())
    });
    child.join();
    drop(mine);
    assert_eq!(array.read_rows(5..10).unwrap().as_slice(), [9; 50]);
}

#[test]
fn readers_share_rows_across_processes_and_exclude_writers() {
    let array = PartitionedArray::<i32>::new(&[4, 4]).unwrap();
    array.claim_rows(0..4).unwrap().fill(3);
    let reading = array.read_rows(0..4).unwrap();
    let child = spawn(|| {
        let also = array.read_rows(1..3).map_err(|e| e.to_string())?;
        ensure!(
            also.iter().all(|&x| x == 3),
            "reader sees {:?}",
            also.as_slice()
        );
        ensure!(
            matches!(array.claim_rows(2..3), Err(ShmError::RowsBusy { .. })),
            "a writer got in while rows were being read"
        );
        Ok(())
    });
    child.join();
    assert_eq!(reading.iter().sum::<i32>(), 48);
}

#[test]
fn a_claim_left_by_a_killed_process_is_cleared() {
    let array = PartitionedArray::<u8>::new(&[8, 8]).unwrap();
    let claimed = SharedValue::new(0u8).unwrap();
    let child = spawn(|| {
        let mut rows = array.claim_rows(0..8).map_err(|e| e.to_string())?;
        rows.fill(1);
        claimed.store(1, Ordering::Release);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    wait_until("the child's claim", || claimed.load(Ordering::Acquire) == 1);
    assert!(matches!(
        array.claim_rows(3..4),
        Err(ShmError::RowsBusy { .. })
    ));
    child.kill();
    assert_eq!(
        child.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );
    let rows = array
        .claim_rows(3..4)
        .expect("the dead process's claim is stale");
    assert_eq!(rows.as_slice(), [1; 8]);
}

/// Claims fail closed (issue 14): when a claim's holder cannot be checked
/// (here no file descriptor is left to read `/proc/<pid>/stat`), the claim
/// stands. The old code took the failed read for a dead holder, cleared the
/// claim and handed the same rows out a second time, as two `&mut [T]`.
#[test]
fn a_claim_whose_holder_cannot_be_checked_is_not_taken_over() {
    use nix::sys::resource::{Resource, setrlimit};
    let array = PartitionedArray::<u32>::new(&[8, 16]).unwrap();
    let held = array.claim_rows(0..4).unwrap();
    let parent = std::process::id() as i32;
    let child = spawn(|| {
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
        match array.claim_rows(2..3) {
            Err(ShmError::RowsBusy { pid, .. }) if pid == parent => {}
            other => return Err(format!("the parent's rows 2..3 were handed out: {other:?}")),
        }
        // This process's own claim.
        let mine = array.claim_rows(4..6).map_err(|e| e.to_string())?;
        match array.claim_rows(5..6) {
            Err(ShmError::RowsBusy { .. }) => {}
            other => return Err(format!("rows 5..6 were handed out twice: {other:?}")),
        }
        drop(mine);
        drop(files);
        Ok(())
    });
    child.join();
    assert!(matches!(
        array.claim_rows(3..4),
        Err(ShmError::RowsBusy { .. })
    ));
    drop(held);
    assert!(array.claim_rows(0..8).is_ok());
}
