//! Guards inherited through `fork` cannot be used by the child.
//!
//! These tests make a child panic on purpose. A panic takes std's backtrace
//! lock; if another thread of the test process were panicking at the moment
//! of `fork`, the child would inherit that lock held and hang. So they live
//! in their own test binary, where no other test panics, instead of beside
//! tests that panic on purpose (e.g. a lock holder that panics).

mod common;

use common::{Outcome, spawn};
use forkpool_shm::{LockedArray, PartitionedArray, ShmError};

#[test]
fn a_guard_inherited_through_fork_cannot_be_used_by_the_child() {
    let array = LockedArray::<u8>::new(&[4]).unwrap();
    let guard = array.lock().unwrap();
    let guard_ref = &guard;
    let child = spawn(move || {
        let _ = guard_ref[0]; // panics: the child does not hold the lock
        Ok(())
    });
    match child.outcome() {
        Outcome::Exited(2, message) => {
            assert!(message.contains("inherited through fork"), "{message}")
        }
        other => panic!("expected a panic in the child, got {other:?}"),
    }
    drop(guard);
    // The parent's lock was neither released nor broken by the child.
    assert!(array.try_lock().is_ok());
}

#[test]
fn a_claim_inherited_through_fork_cannot_be_used_by_the_child() {
    let array = PartitionedArray::<u8>::new(&[4, 4]).unwrap();
    let rows = array.claim_rows(0..2).unwrap();
    let rows_ref = &rows;
    let child = spawn(move || {
        let _ = rows_ref.as_slice();
        Ok(())
    });
    match child.outcome() {
        Outcome::Exited(2, message) => {
            assert!(
                message.contains("claimed by the parent before fork"),
                "{message}"
            )
        }
        other => panic!("expected a panic in the child, got {other:?}"),
    }
    // The child's exit did not release the parent's claim.
    assert!(matches!(
        array.claim_rows(1..2),
        Err(ShmError::RowsBusy { .. })
    ));
    drop(rows);
    assert!(array.claim_rows(1..2).is_ok());
}
