//! [`PartitionedArray`]: rows handed to one task at a time, as an ordinary
//! `&mut [T]` or `ArrayViewMut`, with exclusivity checked across processes.
//!
//! A Rust borrow cannot prove exclusivity across processes: `fork` copies
//! every token and borrow into the child. So claims are recorded where all
//! processes see them, in the array's header: a small table of claimed row
//! ranges (each with its claimer's pid and start time, exclusive or shared)
//! behind its own robust mutex. A claim that overlaps a live conflicting claim,
//! in this process or another, fails with [`ShmError::RowsBusy`]; a claim is
//! released when its guard is dropped; a claim whose process died is stale
//! and is cleared by the next claim that meets it.
//!
//! Every access to a `PartitionedArray` goes through a claim, which is what
//! makes the ordinary slices sound: nothing else (no atomic store, no other
//! process's slice) can touch claimed rows. That is also why this is a type of
//! its own rather than a method of [`SharedArray`], whose lock-free atomic
//! writes do not look at any table.

use std::fmt;
use std::ops::{Deref, DerefMut, Range};
use std::path::Path;
use std::sync::atomic::Ordering;

use ndarray::{ArrayD, ArrayView, ArrayViewMut, IxDyn};

use crate::SharedArray;
use crate::element::Element;
use crate::error::ShmError;
use crate::header::MAX_CLAIMS;
use crate::mutex::Acquired;
use crate::prefault::Access;
use crate::process;

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

/// A shared array whose rows are handed out by claims: an exclusive claim
/// gives one process an ordinary `&mut [T]` and `ArrayViewMut` of rows
/// `[a, b)`; shared claims give readers `&[T]` and `ArrayView`. Claims are
/// checked across every process sharing the array, like a reader-writer lock
/// per range of rows.
///
/// This is the safe form of the disjoint partition of the source notes: give
/// each task a different range of rows ([`row_blocks`](Self::row_blocks)),
/// let the task claim its range and compute on it as on any slice, then let
/// the parent read the result. Memory, creation and lifetime are as for
/// [`SharedArray`]; handles are cheap to clone and `Send + Sync`.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{PartitionedArray, ShmError};
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::{fork, ForkResult};
///
/// let array = PartitionedArray::<f64>::new(&[8, 100])?;
/// let mut children = Vec::new();
/// for rows in array.row_blocks(2) {
///     // SAFETY: the child only touches the array and then `_exit`s.
///     match unsafe { fork() }.expect("fork") {
///         ForkResult::Child => {
///             let code = match array.claim_rows(rows) {
///                 Ok(mut mine) => {
///                     let first = mine.rows().start * 100;
///                     for (i, x) in mine.iter_mut().enumerate() {
///                         *x = (first + i) as f64; // an ordinary &mut [f64]
///                     }
///                     0
///                 }
///                 Err(_) => 1,
///             };
///             // SAFETY: ends the child without running the parent's exit handlers.
///             unsafe { libc::_exit(code) };
///         }
///         ForkResult::Parent { child } => children.push(child),
///     }
/// }
/// for child in children {
///     assert_eq!(waitpid(child, None)?, WaitStatus::Exited(child, 0));
/// }
/// let all = array.read_rows(0..8)?;
/// assert_eq!(all.row(4)[99], 499.0);
/// assert_eq!(all.view().sum(), (0..800).sum::<usize>() as f64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PartitionedArray<T: Element> {
    array: SharedArray<T>,
}

impl<T: Element> Clone for PartitionedArray<T> {
    fn clone(&self) -> Self {
        PartitionedArray {
            array: self.array.clone(),
        }
    }
}

impl<T: Element> fmt::Debug for PartitionedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PartitionedArray")
            .field(&self.array)
            .finish()
    }
}

impl<T: Element> PartitionedArray<T> {
    /// Creates a zero-filled anonymous array of the given shape, as
    /// [`SharedArray::new`] does.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`], e.g. [`ShmError::OutOfMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[4, 4])?;
    /// assert_eq!(array.to_vec()?, [0; 16]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn new(shape: &[usize]) -> Result<Self, ShmError> {
        Ok(Self::from_shared(SharedArray::new(shape)?))
    }

    /// Wraps an array nobody else can reach (freshly created or opened).
    pub(crate) fn from_shared(array: SharedArray<T>) -> Self {
        PartitionedArray { array }
    }

    /// The shape. See [`SharedArray::shape`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[4, 2])?;
    /// assert_eq!(array.shape(), &[4, 2]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// The number of dimensions.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::PartitionedArray::<u8>::new(&[4, 2])?.ndim(), 2);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn ndim(&self) -> usize {
        self.array.ndim()
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::PartitionedArray::<u8>::new(&[4, 2])?.len(), 8);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// Whether the array has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(forkpool_shm::PartitionedArray::<u8>::new(&[0])?.is_empty());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// The number of rows. See [`SharedArray::nrows`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::PartitionedArray::<u8>::new(&[4, 2])?.nrows(), 4);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn nrows(&self) -> usize {
        self.array.nrows()
    }

    /// The number of elements in a row.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::PartitionedArray::<u8>::new(&[4, 2])?.row_len(), 2);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row_len(&self) -> usize {
        self.array.row_len()
    }

    /// The size of the data in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::PartitionedArray::<u32>::new(&[4, 2])?.size_bytes(), 32);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn size_bytes(&self) -> u64 {
        self.array.size_bytes()
    }

    /// The file behind the array, or `None` for an anonymous array.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(forkpool_shm::PartitionedArray::<u8>::new(&[1])?.path().is_none());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn path(&self) -> Option<&Path> {
        self.array.path()
    }

    /// Splits the rows into `parts` disjoint ranges, one per task. See
    /// [`split_rows`].
    ///
    /// # Panics
    ///
    /// If `parts == 0`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[5, 1])?;
    /// assert_eq!(array.row_blocks(2), [0..3, 3..5]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row_blocks(&self, parts: usize) -> Vec<Range<usize>> {
        split_rows(self.nrows(), parts)
    }

    /// Claims rows `[rows.start, rows.end)` exclusively: while the returned
    /// [`RowsMut`] lives, no other claim (exclusive or shared, by any process
    /// sharing the array) can overlap them.
    ///
    /// # Errors
    ///
    /// - [`ShmError::RowsBusy`] if the rows overlap a live claim, naming the
    ///   rows and the pid that holds them (claims of processes that died are
    ///   cleared instead);
    /// - [`ShmError::TooManyClaims`] if 64 claims are held at once;
    /// - [`ShmError::Os`] if the claim table's lock fails.
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{PartitionedArray, ShmError};
    ///
    /// let array = PartitionedArray::<f64>::new(&[8, 100])?;
    /// let mut mine = array.claim_rows(0..4)?;
    /// mine.fill(1.0); // an ordinary `&mut [f64]` of rows 0..4
    /// mine.view_mut()[[3, 99]] = 2.0; // or an `ArrayViewMut`
    ///
    /// // Nobody, in this process or another, can claim those rows meanwhile.
    /// assert!(matches!(array.claim_rows(3..5), Err(ShmError::RowsBusy { .. })));
    /// assert!(matches!(array.read_rows(0..1), Err(ShmError::RowsBusy { .. })));
    /// drop(mine);
    /// assert_eq!(array.read_rows(3..5)?.row(3)[99], 2.0);
    /// # Ok::<(), ShmError>(())
    /// ```
    pub fn claim_rows(&self, rows: Range<usize>) -> Result<RowsMut<'_, T>, ShmError> {
        let claim = self.claim(rows, true)?;
        Ok(RowsMut { claim })
    }

    /// Claims rows `[rows.start, rows.end)` for reading: any number of shared
    /// claims may overlap, but no exclusive one.
    ///
    /// # Errors
    ///
    /// As for [`claim_rows`](Self::claim_rows).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<i32>::new(&[4, 2])?;
    /// let a = array.read_rows(0..4)?;
    /// let b = array.read_rows(1..2)?; // readers share
    /// assert_eq!(a.len(), 8);
    /// assert_eq!(b.as_slice(), [0, 0]);
    /// assert!(array.claim_rows(3..4).is_err()); // but exclude writers
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn read_rows(&self, rows: Range<usize>) -> Result<RowsRef<'_, T>, ShmError> {
        let claim = self.claim(rows, false)?;
        Ok(RowsRef { claim })
    }

    /// Copies the whole array into a vector, row-major, under a shared claim
    /// of all rows.
    ///
    /// # Errors
    ///
    /// As for [`read_rows`](Self::read_rows): [`ShmError::RowsBusy`] while
    /// some rows are claimed exclusively.
    ///
    /// # Examples
    ///
    /// See [`new`](Self::new).
    pub fn to_vec(&self) -> Result<Vec<T>, ShmError> {
        Ok(self.read_rows(0..self.nrows())?.to_vec())
    }

    /// Copies the whole array into an owned `ndarray` array, under a shared
    /// claim of all rows.
    ///
    /// # Errors
    ///
    /// As for [`to_vec`](Self::to_vec).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[2, 3])?;
    /// assert_eq!(array.to_ndarray()?.shape(), &[2, 3]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn to_ndarray(&self) -> Result<ArrayD<T>, ShmError> {
        Ok(self.read_rows(0..self.nrows())?.view().to_owned())
    }

    /// Writes modified pages to the file and waits. See [`SharedArray::flush`].
    ///
    /// # Errors
    ///
    /// [`ShmError::Io`] if `msync` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// forkpool_shm::PartitionedArray::<u8>::new(&[1])?.flush()?;
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn flush(&self) -> Result<(), ShmError> {
        self.array.flush()
    }

    /// Checks the shape. See [`SharedArray::expect_shape`].
    ///
    /// # Errors
    ///
    /// [`ShmError::ShapeMismatch`] naming both shapes.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[2])?;
    /// assert!(array.expect_shape(&[3]).is_err());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn expect_shape(self, expected: &[usize]) -> Result<Self, ShmError> {
        Ok(Self::from_shared(self.array.expect_shape(expected)?))
    }

    fn claim(&self, rows: Range<usize>, exclusive: bool) -> Result<Claim<'_, T>, ShmError> {
        let nrows = self.nrows();
        assert!(
            rows.start <= rows.end && rows.end <= nrows,
            "rows {rows:?} are out of bounds for an array of {nrows} rows"
        );
        let generation = process::generation();
        if rows.is_empty() {
            return Ok(Claim {
                array: &self.array,
                rows,
                slot: None,
                generation,
            });
        }
        let (pid, start_time) = process::identity();
        let header = self.array.region().header();
        let (held, acquired) = header.claims_lock.hold()?;
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
                        pid: holder,
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
            array: &self.array,
            rows,
            slot: Some(i),
            generation,
        })
    }
}

/// A registered claim of rows; frees its slot on drop.
struct Claim<'a, T: Element> {
    array: &'a SharedArray<T>,
    rows: Range<usize>,
    slot: Option<usize>,
    generation: u64,
}

impl<T: Element> Claim<'_, T> {
    fn check_owner(&self) {
        assert!(
            process::current_generation() == self.generation,
            "rows {:?} were claimed by the parent before fork; a child must claim its own rows",
            self.rows
        );
    }

    fn shape(&self) -> Vec<usize> {
        let mut shape = self.array.shape().to_vec();
        if let Some(first) = shape.first_mut() {
            *first = self.rows.len();
        }
        shape
    }

    fn start_ptr(&self) -> *mut T {
        // SAFETY: the rows were checked to be in bounds when claimed, so the
        // offset is at most the length of the data.
        unsafe {
            self.array
                .as_mut_ptr()
                .add(self.rows.start * self.array.row_len())
        }
    }

    fn len(&self) -> usize {
        self.rows.len() * self.array.row_len()
    }

    fn row_range(&self, row: usize) -> Range<usize> {
        assert!(
            self.rows.contains(&row),
            "row {row} is not among the claimed rows {:?}",
            self.rows
        );
        let row_len = self.array.row_len();
        let at = (row - self.rows.start) * row_len;
        at..at + row_len
    }

    fn prefault(&self, access: Access) -> Result<(), ShmError> {
        self.array.prefault_as(self.rows.clone(), access)
    }
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

/// Rows `[a, b)` of a [`PartitionedArray`], claimed exclusively by this
/// process: an ordinary `&mut [T]` (through `Deref`) and `ArrayViewMut`,
/// released on drop.
///
/// Made by [`PartitionedArray::claim_rows`]. A `RowsMut` copied into a child
/// by `fork` belongs to the parent: using it in the child panics, and
/// dropping it there leaves the parent's claim alone.
///
/// # Examples
///
/// ```
/// let array = forkpool_shm::PartitionedArray::<u32>::new(&[6, 4])?;
/// let mut rows = array.claim_rows(2..4)?;
/// assert_eq!(rows.rows(), 2..4);
/// rows.row_mut(3).copy_from_slice(&[1, 2, 3, 4]);
/// assert_eq!(rows.len(), 8);
/// drop(rows);
/// assert_eq!(array.read_rows(3..4)?.as_slice(), [1, 2, 3, 4]);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub struct RowsMut<'a, T: Element> {
    claim: Claim<'a, T>,
}

impl<T: Element> RowsMut<'_, T> {
    /// The rows claimed.
    ///
    /// # Examples
    ///
    /// See [`RowsMut`].
    pub fn rows(&self) -> Range<usize> {
        self.claim.rows.clone()
    }

    /// The shape of the claimed block: the array's shape with the first axis
    /// cut to the claimed rows.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[6, 4, 2])?;
    /// assert_eq!(array.claim_rows(1..4)?.shape(), [3, 4, 2]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn shape(&self) -> Vec<usize> {
        self.claim.shape()
    }

    /// The claimed rows as a shared slice (row-major).
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.claim_rows(0..2)?.as_slice(), [0; 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn as_slice(&self) -> &[T] {
        self.claim.check_owner();
        // SAFETY: the exclusive claim guarantees that no other claim overlaps
        // these rows while `self` lives, and every access to a
        // `PartitionedArray` goes through a claim; the span is in bounds and
        // aligned, and every bit pattern is a valid `T`.
        unsafe { std::slice::from_raw_parts(self.claim.start_ptr(), self.claim.len()) }
    }

    /// The claimed rows as an exclusive slice (row-major).
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// array.claim_rows(1..3)?.as_mut_slice().copy_from_slice(&[1, 2, 3, 4]);
    /// assert_eq!(array.to_vec()?, [0, 0, 1, 2, 3, 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.claim.check_owner();
        // SAFETY: as in `as_slice`, and `&mut self` makes this borrow unique
        // within the process.
        unsafe { std::slice::from_raw_parts_mut(self.claim.start_ptr(), self.claim.len()) }
    }

    /// Row `row` (an index into the whole array) as a shared slice.
    ///
    /// # Panics
    ///
    /// If `row` is not among the claimed rows, or in a child that inherited
    /// this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<i32>::new(&[4, 3])?;
    /// let rows = array.claim_rows(2..4)?;
    /// assert_eq!(rows.row(3), [0, 0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row(&self, row: usize) -> &[T] {
        let range = self.claim.row_range(row);
        &self.as_slice()[range]
    }

    /// Row `row` (an index into the whole array) as an exclusive slice.
    ///
    /// # Panics
    ///
    /// If `row` is not among the claimed rows, or in a child that inherited
    /// this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// See [`RowsMut`].
    pub fn row_mut(&mut self, row: usize) -> &mut [T] {
        let range = self.claim.row_range(row);
        &mut self.as_mut_slice()[range]
    }

    /// The claimed rows as a shared `ndarray` view of shape
    /// [`shape`](Self::shape).
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<f64>::new(&[4, 3])?;
    /// let mut rows = array.claim_rows(1..3)?;
    /// rows.fill(1.0);
    /// assert_eq!(rows.view().sum(), 6.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn view(&self) -> ArrayView<'_, T, IxDyn> {
        self.claim.check_owner();
        // SAFETY: as in `as_slice`; the shape covers exactly the claimed span.
        unsafe { crate::view::shared(self.claim.start_ptr(), &self.claim.shape()) }
    }

    /// The claimed rows as an exclusive `ndarray` view of shape
    /// [`shape`](Self::shape).
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsMut` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::Ix2;
    /// let array = forkpool_shm::PartitionedArray::<f64>::new(&[4, 3])?;
    /// let mut rows = array.claim_rows(2..4)?;
    /// let mut view = rows.view_mut().into_dimensionality::<Ix2>().unwrap();
    /// view.column_mut(0).fill(9.0);
    /// drop(rows);
    /// assert_eq!(array.to_vec()?[6..], [9.0, 0.0, 0.0, 9.0, 0.0, 0.0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, IxDyn> {
        self.claim.check_owner();
        // SAFETY: as in `as_mut_slice`; the shape covers exactly the claimed span.
        unsafe { crate::view::exclusive(self.claim.start_ptr(), &self.claim.shape()) }
    }

    /// Maps the claimed rows' pages into this process, writable, in one call
    /// (see [`SharedArray::prefault`]): do this before filling fresh rows.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::prefault`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<f64>::new(&[64, 512])?;
    /// let mut rows = array.claim_rows(0..32)?;
    /// rows.prefault()?;
    /// rows.fill(1.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    ///
    /// It takes `&mut self`: on kernels without `MADV_POPULATE_WRITE` it
    /// touches each page with a write (an atomic that keeps the value), so no
    /// shared borrow of the rows may be live:
    ///
    /// ```compile_fail
    /// let array = forkpool_shm::PartitionedArray::<f64>::new(&[4, 512])?;
    /// let mut rows = array.claim_rows(0..2)?;
    /// let first: &[f64] = &rows;
    /// rows.prefault()?; // error: `rows` is also borrowed by `first`
    /// assert_eq!(first[0], 0.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn prefault(&mut self) -> Result<(), ShmError> {
        self.claim.prefault(Access::Write)
    }
}

impl<T: Element> Deref for RowsMut<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Element> DerefMut for RowsMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Element> fmt::Debug for RowsMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowsMut")
            .field("rows", &self.claim.rows)
            .field("shape", &self.claim.shape())
            .finish_non_exhaustive()
    }
}

/// Rows `[a, b)` of a [`PartitionedArray`], claimed for reading: an ordinary
/// `&[T]` (through `Deref`) and `ArrayView`, released on drop.
///
/// Made by [`PartitionedArray::read_rows`]. Like [`RowsMut`], it belongs to
/// the process that made it, not to a child forked meanwhile.
///
/// # Examples
///
/// ```
/// let array = forkpool_shm::PartitionedArray::<f64>::new(&[3, 2])?;
/// array.claim_rows(0..3)?.fill(0.5);
/// let all = array.read_rows(0..3)?;
/// assert_eq!(all.iter().sum::<f64>(), 3.0);
/// assert_eq!(all.view().shape(), &[3, 2]);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub struct RowsRef<'a, T: Element> {
    claim: Claim<'a, T>,
}

impl<T: Element> RowsRef<'_, T> {
    /// The rows claimed.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.read_rows(1..3)?.rows(), 1..3);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn rows(&self) -> Range<usize> {
        self.claim.rows.clone()
    }

    /// The shape of the claimed block.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.read_rows(1..3)?.shape(), [2, 2]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn shape(&self) -> Vec<usize> {
        self.claim.shape()
    }

    /// The claimed rows as a slice (row-major).
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsRef` through `fork`.
    ///
    /// # Examples
    ///
    /// See [`RowsRef`].
    pub fn as_slice(&self) -> &[T] {
        self.claim.check_owner();
        // SAFETY: the shared claim guarantees that no exclusive claim overlaps
        // these rows while `self` lives, and every write to a
        // `PartitionedArray` goes through an exclusive claim; the span is in
        // bounds and aligned.
        unsafe { std::slice::from_raw_parts(self.claim.start_ptr(), self.claim.len()) }
    }

    /// Row `row` (an index into the whole array).
    ///
    /// # Panics
    ///
    /// If `row` is not among the claimed rows, or in a child that inherited
    /// this `RowsRef` through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.read_rows(1..3)?.row(2), [0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row(&self, row: usize) -> &[T] {
        let range = self.claim.row_range(row);
        &self.as_slice()[range]
    }

    /// The claimed rows as an `ndarray` view.
    ///
    /// # Panics
    ///
    /// In a child that inherited this `RowsRef` through `fork`.
    ///
    /// # Examples
    ///
    /// See [`RowsRef`].
    pub fn view(&self) -> ArrayView<'_, T, IxDyn> {
        self.claim.check_owner();
        // SAFETY: as in `as_slice`; the shape covers exactly the claimed span.
        unsafe { crate::view::shared(self.claim.start_ptr(), &self.claim.shape()) }
    }

    /// Maps the claimed rows' pages into this process for reading, in one
    /// call (see [`SharedArray::prefault_read`]).
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::prefault`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::PartitionedArray::<u8>::new(&[3, 2])?;
    /// array.read_rows(0..3)?.prefault()?;
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn prefault(&self) -> Result<(), ShmError> {
        self.claim.prefault(Access::Read)
    }
}

impl<T: Element> Deref for RowsRef<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Element> fmt::Debug for RowsRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowsRef")
            .field("rows", &self.claim.rows)
            .field("shape", &self.claim.shape())
            .finish_non_exhaustive()
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

    #[test]
    fn claims_conflict_within_a_process_and_free_on_drop() {
        let array = PartitionedArray::<u8>::new(&[10, 3]).unwrap();
        let a = array.claim_rows(0..5).unwrap();
        let b = array.claim_rows(5..10).unwrap();
        match array.claim_rows(4..6) {
            Err(ShmError::RowsBusy { held, pid, .. }) => {
                assert_eq!(held, 0..5);
                assert_eq!(pid, std::process::id() as i32);
            }
            other => panic!("expected RowsBusy, got {other:?}"),
        }
        assert!(matches!(
            array.read_rows(9..10),
            Err(ShmError::RowsBusy { .. })
        ));
        // Empty claims never conflict.
        assert!(array.claim_rows(4..4).is_ok());
        drop(a);
        let c = array.claim_rows(0..5).unwrap();
        drop((b, c));
        let r1 = array.read_rows(0..10).unwrap();
        let r2 = array.read_rows(2..3).unwrap();
        assert!(matches!(
            array.claim_rows(2..3),
            Err(ShmError::RowsBusy { .. })
        ));
        drop((r1, r2));
        assert!(array.claim_rows(0..10).is_ok());
    }

    #[test]
    fn the_claim_table_has_a_limit_and_says_so() {
        let array = PartitionedArray::<u8>::new(&[MAX_CLAIMS + 1]).unwrap();
        let claims: Vec<_> = (0..MAX_CLAIMS)
            .map(|i| array.claim_rows(i..i + 1).unwrap())
            .collect();
        let err = array.claim_rows(MAX_CLAIMS..MAX_CLAIMS + 1).unwrap_err();
        assert!(matches!(err, ShmError::TooManyClaims { max: MAX_CLAIMS }));
        drop(claims);
        assert!(array.claim_rows(MAX_CLAIMS..MAX_CLAIMS + 1).is_ok());
    }

    #[test]
    fn a_stale_claim_of_a_dead_process_is_cleared() {
        let array = PartitionedArray::<u8>::new(&[4]).unwrap();
        // Forge an exclusive claim by a process that does not exist.
        let slot = &array.array.region().header().claims[0];
        slot.start.store(0, Ordering::Relaxed);
        slot.end.store(4, Ordering::Relaxed);
        slot.start_time.store(1, Ordering::Relaxed);
        slot.exclusive.store(1, Ordering::Relaxed);
        slot.pid.store(i32::MAX, Ordering::Release);
        let rows = array.claim_rows(1..3).unwrap();
        assert_eq!(rows.rows(), 1..3);
    }

    #[test]
    fn zero_dimensional_arrays_are_one_row() {
        let array = PartitionedArray::<f64>::new(&[]).unwrap();
        let mut only = array.claim_rows(0..1).unwrap();
        assert_eq!(only.shape(), Vec::<usize>::new());
        only[0] = 2.5;
        assert_eq!(only.view().ndim(), 0);
        drop(only);
        assert_eq!(array.to_vec().unwrap(), [2.5]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_claims_panic() {
        let array = PartitionedArray::<u8>::new(&[4]).unwrap();
        let _ = array.claim_rows(2..5);
    }
}
