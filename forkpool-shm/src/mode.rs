//! Access modes: the second type parameter of [`SharedArray`], as the
//! storage is the first of ndarray's `ArrayBase<S, D>`.
//!
//! One array type, one set of methods for what every mode shares (shape,
//! files, copies out), and the mode-specific ones in an `impl` block per
//! mode:
//!
//! | mode | Python | access |
//! |---|---|---|
//! | [`Atomic`] (the default) | `RawArray`, `Array(lock=False)` | atomic element and row access, any process at any time |
//! | [`Locked`] | `Array(lock=True)`, `with arr.get_lock():` | `&mut [T]`/`ArrayViewMut` of the whole array in [`with_lock`](SharedArray::with_lock) |
//! | [`Partitioned`] | each worker its own rows | `&mut [T]`/`ArrayViewMut` of claimed rows in [`with_rows_mut`](SharedArray::with_rows_mut) |
//!
//! A mode is fixed when the array is made: the lock and the claim table
//! only exclude what goes through them, so an array cannot be used in two
//! modes at once.

use std::ops::Range;

use crate::error::ShmError;
use crate::{Element, SharedArray};

/// How a [`SharedArray`]'s elements are reached: [`Atomic`], [`Locked`] or
/// [`Partitioned`]. Sealed.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{Atomic, Locked, Partitioned, SharedArray};
///
/// let atomic = SharedArray::<f64>::new(&[4])?; // `Atomic` is the default
/// let locked = SharedArray::<f64, Locked>::new(&[4])?;
/// let rows = SharedArray::<f64, Partitioned>::new(&[4])?;
/// atomic.set(0, 1.0);
/// locked.with_lock(|data| data[0] = 1.0)?;
/// rows.with_rows_mut(0..1, |row| row[0] = 1.0)?;
/// // What every mode shares is written once:
/// assert_eq!(atomic.to_vec()?, locked.to_vec()?);
/// assert_eq!(locked.to_vec()?, rows.to_vec()?);
/// # let _: SharedArray<f64, Atomic> = atomic;
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub trait Mode: sealed::Access {}

/// Lock-free: every element read and written with atomics, by any process
/// at any time (`multiprocessing.Array(lock=False)`). The default mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct Atomic;

/// Behind a robust, process-shared lock: ordinary slices and views of the
/// whole array inside [`with_lock`](SharedArray::with_lock)
/// (`multiprocessing.Array(lock=True)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Locked;

/// Rows claimed by one process at a time: ordinary slices and views of the
/// claimed rows inside [`with_rows_mut`](SharedArray::with_rows_mut) and
/// [`with_rows`](SharedArray::with_rows), checked across processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Partitioned;

impl Mode for Atomic {}
impl Mode for Locked {}
impl Mode for Partitioned {}

pub(crate) mod sealed {
    use super::*;

    /// What differs between modes where the methods are shared: how rows
    /// are copied out.
    pub trait Access: Sized + Send + Sync + 'static {
        /// The mode's name, for `Debug` and errors.
        const NAME: &'static str;
        /// Whether an array of this mode may be mapped read-only: only if
        /// it never hands out `&mut [T]`.
        const READ_ONLY_OK: bool = false;
        /// Copies rows `rows` (in bounds) into `dst` (as long as they are),
        /// as this mode allows: atomic loads, under the lock, or under a
        /// shared claim.
        fn copy_rows<T: Element>(
            array: &SharedArray<T, Self>,
            rows: Range<usize>,
            dst: &mut [T],
        ) -> Result<(), ShmError>;
    }

    impl Access for Atomic {
        const NAME: &'static str = "atomic";
        const READ_ONLY_OK: bool = true;
        fn copy_rows<T: Element>(
            array: &SharedArray<T>,
            rows: Range<usize>,
            dst: &mut [T],
        ) -> Result<(), ShmError> {
            array.read_rows(rows.start, dst);
            Ok(())
        }
    }

    impl Access for Locked {
        const NAME: &'static str = "locked";
        fn copy_rows<T: Element>(
            array: &SharedArray<T, Locked>,
            rows: Range<usize>,
            dst: &mut [T],
        ) -> Result<(), ShmError> {
            let row_len = array.row_len();
            array.with_lock(|data| {
                dst.copy_from_slice(&data[rows.start * row_len..rows.end * row_len])
            })?;
            Ok(())
        }
    }

    impl Access for Partitioned {
        const NAME: &'static str = "partitioned";
        fn copy_rows<T: Element>(
            array: &SharedArray<T, Partitioned>,
            rows: Range<usize>,
            dst: &mut [T],
        ) -> Result<(), ShmError> {
            array.with_rows(rows, |held| dst.copy_from_slice(held))
        }
    }
}
