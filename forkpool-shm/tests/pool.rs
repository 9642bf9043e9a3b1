//! The scoped forms (`with_rows_mut`, `with_rows`, `with_lock`) under
//! `forkpool`'s pool, whose fork is safe: workers reach the arrays through
//! a `static` set by the initializer, and hold rows or the lock only inside
//! a closure (so nothing exclusive can cross the fork; see the
//! `compile_fail` examples on `forkpool_shm::Rows`).

use std::ops::Range;
use std::sync::OnceLock;

use forkpool::Pool;
use forkpool_shm::{Locked, Partitioned, SharedArray};

static ROWS: OnceLock<SharedArray<u64, Partitioned>> = OnceLock::new();
static COUNTS: OnceLock<(SharedArray<u64, Locked>, SharedArray<u64, Locked>)> = OnceLock::new();

/// Fills rows `rows` with this worker's pid, through an ordinary `&mut [u64]`
/// and a view; returns the pid.
fn fill_with_pid(rows: Range<usize>) -> Result<u32, String> {
    let array = ROWS.get().ok_or("the initializer did not run")?;
    let pid = std::process::id();
    array
        .with_rows_mut(rows, |mine| {
            mine.prefault()?;
            mine.fill(u64::from(pid) + 1);
            mine.view_mut().map_inplace(|x| *x -= 1); // a view of the same rows
            Ok::<_, forkpool_shm::ShmError>(())
        })
        .and_then(|filled| filled)
        .map_err(|e| e.to_string())?;
    Ok(pid)
}

/// Adds one to every element of the locked array and to the locked value,
/// each a plain read then write under the lock.
fn increment(_task: usize) -> Result<(), String> {
    let (array, value) = COUNTS.get().ok_or("the initializer did not run")?;
    array
        .with_lock(|data| {
            for x in data.iter_mut() {
                let seen = *x;
                *x = std::hint::black_box(seen) + 1;
            }
        })
        .map_err(|e| e.to_string())?;
    value
        .with_lock(|v| v[0] = std::hint::black_box(v[0]) + 1)
        .map_err(|e| e.to_string())
}

/// A pool of two workers that each run `init` first.
fn two_workers(init: impl FnMut() + 'static) -> Pool {
    Pool::builder()
        .processes(2)
        .initializer(init)
        .build()
        .unwrap()
}

#[test]
fn pool_workers_fill_claimed_rows_through_a_static_set_by_the_initializer() {
    let array = SharedArray::<u64, Partitioned>::new(&[64, 512]).unwrap();
    let blocks = array.row_blocks(16);
    let handle = array.clone();
    let pool = two_workers(move || {
        let _ = ROWS.set(handle.clone());
    });
    let pids = pool.map(fill_with_pid, blocks.clone()).unwrap();
    let workers = pool.worker_pids();
    drop(pool);

    let pids: Vec<u32> = pids.into_iter().map(Result::unwrap).collect();
    array
        .with_rows(0..64, |all| {
            for (rows, pid) in blocks.iter().zip(&pids) {
                assert!(
                    workers.contains(&forkpool_shm::Pid::from_raw(*pid as i32)),
                    "pid {pid} is no worker"
                );
                for row in rows.clone() {
                    assert!(
                        all.row(row).iter().all(|&x| x == u64::from(*pid)),
                        "row {row} was not filled by pid {pid}"
                    );
                }
            }
        })
        .unwrap();
    // Every claim was released when its closure returned: all rows are free.
    assert!(array.with_rows_mut(0..64, |_| ()).is_ok());
}

#[test]
fn pool_workers_update_a_locked_array_without_losing_an_increment() {
    let counts = (
        SharedArray::<u64, Locked>::new(&[4, 8]).unwrap(),
        SharedArray::<_, Locked>::full(&[], 0u64).unwrap(),
    );
    let handle = counts.clone();
    let pool = two_workers(move || {
        let _ = COUNTS.set(handle.clone());
    });
    let results = pool.map_chunked(increment, 0..400, 1).unwrap();
    drop(pool);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (array, value) = counts;
    assert_eq!(array.with_lock(|data| data.to_vec()).unwrap(), [400; 32]);
    assert_eq!(value.with_lock(|v| v[0]).unwrap(), 400);
    assert!(!array.is_poisoned() && !value.is_poisoned());
}
