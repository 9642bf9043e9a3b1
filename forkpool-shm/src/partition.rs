//! Arrays in [`Partitioned`] mode: rows handed to one task at a time, as an ordinary
//! `&mut [T]` or `ArrayViewMut`, with exclusivity checked across processes.
//!
//! A Rust borrow cannot prove exclusivity across processes: `fork` copies
//! every token and borrow into the child. So claims are recorded where all
//! processes see them, in the array's header: a small table of claimed row
//! ranges (each with its claimer's pid and start time, exclusive or shared)
//! behind its own robust mutex. A claim that overlaps a live conflicting claim,
//! in this process or another, fails with [`ShmError::RowsBusy`]; a claim is
//! released when the closure that holds it returns (or panics); a claim
//! whose process is known to have died is stale and is cleared by the next
//! claim that meets it.
//!
//! Every access to a `Partitioned` array goes through a claim, which is what
//! makes the ordinary slices sound: nothing else (no atomic store, no other
//! process's slice) can touch claimed rows. That is also why it is a mode of
//! its own: the lock-free writes of an [`Atomic`](crate::Atomic) array do
//! not look at any table.

use std::ops::Range;
use std::sync::atomic::Ordering;

use crate::SharedArray;
use crate::element::Element;
use crate::error::ShmError;
use crate::header::MAX_CLAIMS;
use crate::mode::Partitioned;
use crate::mutex::{Acquired, Wait};
use crate::process;
use crate::rows::Rows;

/// Splits `nrows` rows into `parts` contiguous, disjoint ranges of nearly
/// equal size, in order; the first `nrows % parts` ranges have one row more.
///
/// # Panics
///
/// If `parts == 0`.
///
/// # Examples
///
/// ```
/// use forkpool_shm::split_rows;
///
/// assert_eq!(split_rows(10, 4), [0..3, 3..6, 6..8, 8..10]);
/// assert_eq!(split_rows(2, 3), [0..1, 1..2, 2..2]);
/// ```
pub fn split_rows(nrows: usize, parts: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "cannot split rows into 0 parts");
    let (base, extra) = (nrows / parts, nrows % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// # Partitioned mode
///
/// A [`Partitioned`] array's rows are handed out by claims: an exclusive claim
/// gives one process an ordinary `&mut [T]` and `ArrayViewMut` of rows
/// `[a, b)`; shared claims give readers `&[T]` and `ArrayView`. Claims are
/// checked across every process sharing the array, like a reader-writer lock
/// per range of rows.
///
/// This is the safe form of the disjoint partition of the source notes: give
/// each task a different range of rows ([`row_blocks`](Self::row_blocks)),
/// let the task claim its range and compute on it as on any slice, then let
/// the parent read the result. Memory, creation and lifetime are as for
/// every array; handles are cheap to clone and `Send + Sync`.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{Partitioned, SharedArray};
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::{fork, ForkResult};
///
/// let array = SharedArray::<f64, Partitioned>::new(&[8, 100])?;
/// let mut children = Vec::new();
/// for rows in array.row_blocks(2) {
///     // SAFETY: the child only touches the array and then `_exit`s.
///     match unsafe { fork() }.expect("fork") {
///         ForkResult::Child => {
///             let filled = array.with_rows_mut(rows, |mine| {
///                 let first = mine.range().start * 100;
///                 for (i, x) in mine.iter_mut().enumerate() {
///                     *x = (first + i) as f64; // an ordinary &mut [f64]
///                 }
///             });
///             let code = if filled.is_ok() { 0 } else { 1 };
///             // SAFETY: ends the child without running the parent's exit handlers.
///             unsafe { libc::_exit(code) };
///         }
///         ForkResult::Parent { child } => children.push(child),
///     }
/// }
/// for child in children {
///     assert_eq!(waitpid(child, None)?, WaitStatus::Exited(child, 0));
/// }
/// array.with_rows(0..8, |all| {
///     assert_eq!(all.row(4)[99], 499.0);
///     assert_eq!(all.view().sum(), (0..800).sum::<usize>() as f64);
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: Element> SharedArray<T, Partitioned> {
    /// Runs `f` on rows `[rows.start, rows.end)` claimed exclusively: while
    /// `f` runs, no other claim (exclusive or shared, by any process sharing
    /// the array) can overlap them, and `f` gets them as an ordinary
    /// `&mut [T]` and `ArrayViewMut` ([`Rows`]). The claim is released when
    /// `f` returns or panics.
    ///
    /// The rows are only reachable inside `f`, so no `&mut` into the shared
    /// memory can outlive the call, be stored in a `static` or be moved into
    /// a pool's `initializer` (and so be copied into every worker by the
    /// pool's fork): see [`Rows`].
    ///
    /// # Errors
    ///
    /// - [`ShmError::RowsBusy`] if the rows overlap a live claim, naming the
    ///   rows and the pid that holds them (claims of processes known to be
    ///   dead are cleared instead; a holder whose liveness cannot be read
    ///   keeps its rows);
    /// - [`ShmError::TooManyClaims`] if 64 claims are held at once;
    /// - [`ShmError::RowsOutOfBounds`] if the rows do not fit the array;
    /// - [`ShmError::Os`] if the claim table's lock fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{Partitioned, SharedArray, ShmError};
    ///
    /// let array = SharedArray::<f64, Partitioned>::new(&[8, 100])?;
    /// array.with_rows_mut(0..4, |mine| {
    ///     mine.fill(1.0); // an ordinary `&mut [f64]` of rows 0..4
    ///     mine.view_mut()[[3, 99]] = 2.0; // or an `ArrayViewMut`
    ///     // Nobody, in this process or another, can claim those rows meanwhile.
    ///     assert!(matches!(array.with_rows_mut(3..5, |_| ()), Err(ShmError::RowsBusy { .. })));
    ///     assert!(matches!(array.with_rows(0..1, |_| ()), Err(ShmError::RowsBusy { .. })));
    /// })?;
    /// assert_eq!(array.with_rows(3..5, |rows| rows.row(3)[99])?, 2.0);
    /// # Ok::<(), ShmError>(())
    /// ```
    pub fn with_rows_mut<R>(
        &self,
        rows: Range<usize>,
        f: impl FnOnce(&mut Rows<'_, T>) -> R,
    ) -> Result<R, ShmError> {
        let claim = self.claim(rows, true)?;
        // SAFETY: the rows are in bounds (checked by `claim`), and the
        // exclusive claim keeps every other claim, in any process, off them
        // until `claim` is dropped, after `f` returns; every access to a
        // `Partitioned` array's data goes through a claim.
        let mut held = unsafe { Rows::new(self, claim.rows.clone()) };
        let result = f(&mut held);
        drop(claim);
        Ok(result)
    }

    /// Runs `f` on rows `[rows.start, rows.end)` claimed for reading: any
    /// number of shared claims may overlap, but no exclusive one. `f` gets
    /// them as an ordinary `&[T]` and `ArrayView` (`&Rows`).
    ///
    /// # Errors
    ///
    /// As for [`with_rows_mut`](Self::with_rows_mut).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<i32, forkpool_shm::Partitioned>::new(&[4, 2])?;
    /// array.with_rows(0..4, |a| {
    ///     let b = array.with_rows(1..2, |b| b.to_vec()).unwrap(); // readers share
    ///     assert_eq!((a.len(), b), (8, vec![0, 0]));
    ///     assert!(array.with_rows_mut(3..4, |_| ()).is_err()); // but exclude writers
    /// })?;
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn with_rows<R>(
        &self,
        rows: Range<usize>,
        f: impl FnOnce(&Rows<'_, T>) -> R,
    ) -> Result<R, ShmError> {
        let claim = self.claim(rows, false)?;
        // SAFETY: in bounds; the shared claim keeps every exclusive claim
        // off these rows until `claim` is dropped, after `f` returns, and
        // every write goes through an exclusive claim. `f` only gets `&Rows`.
        let held = unsafe { Rows::new(self, claim.rows.clone()) };
        let result = f(&held);
        drop(claim);
        Ok(result)
    }

    fn claim(&self, rows: Range<usize>, exclusive: bool) -> Result<Claim<'_, T>, ShmError> {
        self.check_rows(&rows)?;
        let generation = process::generation();
        if rows.is_empty() {
            return Ok(Claim {
                array: self,
                rows,
                slot: None,
                generation,
            });
        }
        let (pid, start_time) = process::identity();
        let header = self.region().header();
        let (held, acquired) = header.claims_lock.hold(Wait::Forever)?;
        if acquired != Acquired::Clean {
            // A claimer died inside this critical section. Every slot is still
            // consistent (a slot is published by its pid, written last, and
            // freed by clearing it), so the table is usable as it is.
            header.claims_lock.clear_poison();
        }
        let mut free = None;
        for (i, slot) in header.claims.iter().enumerate() {
            let holder = slot.pid.load(Ordering::Acquire);
            if holder == 0 {
                free = free.or(Some(i));
                continue;
            }
            let held_rows = slot.start.load(Ordering::Relaxed) as usize
                ..slot.end.load(Ordering::Relaxed) as usize;
            let overlaps = held_rows.start < rows.end && rows.start < held_rows.end;
            let conflicts = exclusive || slot.exclusive.load(Ordering::Relaxed) != 0;
            if overlaps && conflicts {
                // Fails closed: a holder whose liveness cannot be read
                // keeps its rows.
                if process::may_be_alive(holder, slot.start_time.load(Ordering::Relaxed)) {
                    return Err(ShmError::RowsBusy {
                        requested: rows,
                        held: held_rows,
                        pid: nix::unistd::Pid::from_raw(holder),
                    });
                }
                // A claim left by a process that died: clear it.
                slot.pid.store(0, Ordering::Release);
                free = free.or(Some(i));
            }
        }
        let Some(i) = free else {
            return Err(ShmError::TooManyClaims { max: MAX_CLAIMS });
        };
        let slot = &header.claims[i];
        slot.start.store(rows.start as u64, Ordering::Relaxed);
        slot.end.store(rows.end as u64, Ordering::Relaxed);
        slot.start_time.store(start_time, Ordering::Relaxed);
        slot.exclusive
            .store(u32::from(exclusive), Ordering::Relaxed);
        slot.pid.store(pid, Ordering::Release);
        drop(held);
        Ok(Claim {
            array: self,
            rows,
            slot: Some(i),
            generation,
        })
    }
}

/// A registered claim of rows; frees its slot on drop.
struct Claim<'a, T: Element> {
    array: &'a SharedArray<T, Partitioned>,
    rows: Range<usize>,
    slot: Option<usize>,
    generation: u64,
}

impl<T: Element> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        if process::current_generation() != self.generation {
            return; // a copy inherited through fork: the claim is the parent's
        }
        let slot = &self.array.region().header().claims[i];
        // Release: our accesses through the slice happen-before the next
        // claimer's Acquire load of the freed slot.
        slot.pid.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_covers_everything_once() {
        for nrows in 0..20 {
            for parts in 1..8 {
                let blocks = split_rows(nrows, parts);
                assert_eq!(blocks.len(), parts);
                assert_eq!(blocks[0].start, 0);
                assert_eq!(blocks[parts - 1].end, nrows);
                for pair in blocks.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() >= pair[1].len());
                    assert!(pair[0].len() - pair[1].len() <= 1);
                }
            }
        }
    }

    fn busy<R>(result: Result<R, ShmError>) -> bool {
        matches!(result, Err(ShmError::RowsBusy { .. }))
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn claims_conflict_within_a_process_and_free_when_the_closure_returns() {
        let array = SharedArray::<u8, Partitioned>::new(&[10, 3]).unwrap();
        array
            .with_rows_mut(0..5, |_| {
                array
                    .with_rows_mut(5..10, |_| {
                        match array.with_rows_mut(4..6, |_| ()) {
                            Err(ShmError::RowsBusy { held, pid, .. }) => {
                                assert_eq!(held, 0..5);
                                assert_eq!(pid, nix::unistd::Pid::this());
                            }
                            other => panic!("expected RowsBusy, got {other:?}"),
                        }
                        assert!(busy(array.with_rows(9..10, |_| ())));
                        // Empty claims never conflict.
                        assert!(array.with_rows_mut(4..4, |_| ()).is_ok());
                    })
                    .unwrap();
                // 5..10 is free again, 0..5 still held.
                assert!(array.with_rows_mut(5..10, |_| ()).is_ok());
                assert!(busy(array.with_rows(4..5, |_| ())));
            })
            .unwrap();
        array
            .with_rows(0..10, |_| {
                array.with_rows(2..3, |_| ()).unwrap();
                assert!(busy(array.with_rows_mut(2..3, |_| ())));
            })
            .unwrap();
        assert!(array.with_rows_mut(0..10, |_| ()).is_ok());
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn a_claim_is_released_when_its_closure_panics() {
        let array = SharedArray::<u8, Partitioned>::new(&[4]).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            array.with_rows_mut(0..4, |_| panic!("boom")).unwrap()
        }));
        assert!(panicked.is_err());
        assert!(array.with_rows_mut(0..4, |_| ()).is_ok());
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn the_claim_table_has_a_limit_and_says_so() {
        fn nest(array: &SharedArray<u8, Partitioned>, i: usize) {
            if i == MAX_CLAIMS {
                let err = array.with_rows_mut(i..i + 1, |_| ()).unwrap_err();
                assert!(matches!(err, ShmError::TooManyClaims { max: MAX_CLAIMS }));
                return;
            }
            array
                .with_rows_mut(i..i + 1, |_| nest(array, i + 1))
                .unwrap();
        }
        let array = SharedArray::<u8, Partitioned>::new(&[MAX_CLAIMS + 1]).unwrap();
        nest(&array, 0);
        assert!(
            array
                .with_rows_mut(MAX_CLAIMS..MAX_CLAIMS + 1, |_| ())
                .is_ok()
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn a_stale_claim_of_a_dead_process_is_cleared() {
        let array = SharedArray::<u8, Partitioned>::new(&[4]).unwrap();
        // Forge an exclusive claim by a process that does not exist.
        let slot = &array.region().header().claims[0];
        slot.start.store(0, Ordering::Relaxed);
        slot.end.store(4, Ordering::Relaxed);
        slot.start_time.store(1, Ordering::Relaxed);
        slot.exclusive.store(1, Ordering::Relaxed);
        slot.pid.store(i32::MAX, Ordering::Release);
        assert_eq!(
            array.with_rows_mut(1..3, |rows| rows.range()).unwrap(),
            1..3
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn zero_dimensional_arrays_are_one_row() {
        let array = SharedArray::<f64, Partitioned>::new(&[]).unwrap();
        array
            .with_rows_mut(0..1, |only| {
                assert_eq!(only.shape(), Vec::<usize>::new());
                only[0] = 2.5;
                assert_eq!(only.view().ndim(), 0);
            })
            .unwrap();
        assert_eq!(array.to_vec().unwrap(), [2.5]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "claims read /proc and register pthread_atfork")]
    fn out_of_bounds_claims_are_an_error_naming_the_rows() {
        let array = SharedArray::<u8, Partitioned>::new(&[4]).unwrap();
        let err = array.with_rows_mut(2..5, |_| ()).unwrap_err();
        assert!(matches!(err, ShmError::RowsOutOfBounds { nrows: 4, .. }));
        assert_eq!(
            err.to_string(),
            "rows 2..5 are out of bounds for an array of 4 rows"
        );
    }
}
