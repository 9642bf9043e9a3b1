//! Shared scalars: [`SharedValue`] (atomic, lock-free) and [`LockedValue`]
//! (behind a robust lock), the counterparts of `multiprocessing.Value` with
//! `lock=False` and `lock=True`, for counters and flags.
//!
//! Each is a zero-dimensional array: one element in its own shared mapping
//! (a header page and a data page, 8 KiB).

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::SharedArray;
use crate::element::Element;
use crate::error::{LockResult, ShmError};
use crate::locked::LockedArray;

/// One number shared by every process forked after its creation, read and
/// written atomically: counters and flags without a lock.
///
/// Read-modify-write operations ([`fetch_add`](Self::fetch_add),
/// [`compare_exchange`](Self::compare_exchange)...) are single atomic
/// instructions for integers (a compare-and-swap loop for floats), so
/// concurrent increments from many processes are never lost, unlike
/// `value.value += 1` on a Python `Value(lock=False)`.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::Ordering;
/// use forkpool_shm::SharedValue;
/// use nix::sys::wait::waitpid;
/// use nix::unistd::{fork, ForkResult};
///
/// let done = SharedValue::new(0u32)?;
/// // SAFETY: the child only touches the value and then `_exit`s.
/// match unsafe { fork() }? {
///     ForkResult::Child => {
///         done.fetch_add(1, Ordering::AcqRel);
///         // SAFETY: ends the child without running the parent's exit handlers.
///         unsafe { libc::_exit(0) };
///     }
///     ForkResult::Parent { child } => {
///         waitpid(child, None)?;
///     }
/// }
/// assert_eq!(done.get(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedValue<T: Element> {
    array: SharedArray<T>,
}

impl<T: Element> Clone for SharedValue<T> {
    fn clone(&self) -> Self {
        SharedValue {
            array: self.array.clone(),
        }
    }
}

impl<T: Element> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedValue").field(&self.get()).finish()
    }
}

impl<T: Element> SharedValue<T> {
    /// Creates a shared value holding `initial`.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`] (out of memory, `memfd_create` failing).
    ///
    /// # Examples
    ///
    /// ```
    /// let pi = forkpool_shm::SharedValue::new(3.14f64)?;
    /// assert_eq!(pi.get(), 3.14);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn new(initial: T) -> Result<Self, ShmError> {
        let array = SharedArray::new(&[])?;
        array.store(0, initial, Ordering::Release);
        Ok(SharedValue { array })
    }

    /// Reads the value (`SeqCst`).
    ///
    /// # Examples
    ///
    /// See [`new`](Self::new).
    pub fn get(&self) -> T {
        self.array.load(0, Ordering::SeqCst)
    }

    /// Writes the value (`SeqCst`).
    ///
    /// # Examples
    ///
    /// ```
    /// let flag = forkpool_shm::SharedValue::new(false as u8)?;
    /// flag.set(1);
    /// assert_eq!(flag.get(), 1);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn set(&self, value: T) {
        self.array.store(0, value, Ordering::SeqCst)
    }

    /// Reads the value with the given ordering.
    ///
    /// # Panics
    ///
    /// If `order` is `Release` or `AcqRel`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let v = forkpool_shm::SharedValue::new(5i64)?;
    /// assert_eq!(v.load(Ordering::Acquire), 5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn load(&self, order: Ordering) -> T {
        self.array.load(0, order)
    }

    /// Writes the value with the given ordering.
    ///
    /// # Panics
    ///
    /// If `order` is `Acquire` or `AcqRel`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let v = forkpool_shm::SharedValue::new(5i64)?;
    /// v.store(6, Ordering::Release);
    /// assert_eq!(v.get(), 6);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn store(&self, value: T, order: Ordering) {
        self.array.store(0, value, order)
    }

    /// Replaces the value, returning the previous one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let v = forkpool_shm::SharedValue::new(1u8)?;
    /// assert_eq!(v.swap(2, Ordering::AcqRel), 1);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn swap(&self, value: T, order: Ordering) -> T {
        self.array.swap(0, value, order)
    }

    /// Replaces the value by `new` if it equals `current` (bitwise, for
    /// floats); returns the previous value, `Ok` if it was replaced.
    ///
    /// # Panics
    ///
    /// If the orderings are invalid, as for the std atomics.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering::{AcqRel, Acquire};
    /// let owner = forkpool_shm::SharedValue::new(0i32)?;
    /// assert_eq!(owner.compare_exchange(0, 42, AcqRel, Acquire), Ok(0));
    /// assert_eq!(owner.compare_exchange(0, 43, AcqRel, Acquire), Err(42));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn compare_exchange(
        &self,
        current: T,
        new: T,
        success: Ordering,
        failure: Ordering,
    ) -> Result<T, T> {
        self.array
            .compare_exchange(0, current, new, success, failure)
    }

    /// Adds to the value (wrapping for integers), returning the previous one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let hits = forkpool_shm::SharedValue::new(0u64)?;
    /// assert_eq!(hits.fetch_add(2, Ordering::Relaxed), 0);
    /// assert_eq!(hits.get(), 2);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fetch_add(&self, value: T, order: Ordering) -> T {
        self.array.fetch_add(0, value, order)
    }

    /// Subtracts from the value (wrapping for integers), returning the
    /// previous one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let left = forkpool_shm::SharedValue::new(10i32)?;
    /// left.fetch_sub(3, Ordering::Relaxed);
    /// assert_eq!(left.get(), 7);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fetch_sub(&self, value: T, order: Ordering) -> T {
        self.array.fetch_sub(0, value, order)
    }
}

/// One number behind a lock that every process forked after its creation
/// shares, for updates that must not interleave (several fields at once, a
/// read-compute-write). The lock is robust: see [`LockedArray`].
///
/// # Examples
///
/// ```
/// let total = forkpool_shm::LockedValue::new(0.0f64)?;
/// total.with_lock(|total| {
///     *total += 1.5;
///     *total *= 2.0;
/// })?;
/// assert_eq!(total.with_lock(|total| *total)?, 3.0);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub struct LockedValue<T: Element> {
    array: LockedArray<T>,
}

impl<T: Element> Clone for LockedValue<T> {
    fn clone(&self) -> Self {
        LockedValue {
            array: self.array.clone(),
        }
    }
}

impl<T: Element> fmt::Debug for LockedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedValue")
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl<T: Element> LockedValue<T> {
    /// Creates a locked value holding `initial`.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// let v = forkpool_shm::LockedValue::new(7u16)?;
    /// assert_eq!(v.with_lock(|v| *v)?, 7);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn new(initial: T) -> Result<Self, ShmError> {
        let array = SharedArray::new(&[])?;
        array.store(0, initial, Ordering::Release);
        Ok(LockedValue {
            array: LockedArray::from_shared(array),
        })
    }

    /// Runs `f` on the value with the lock held. See
    /// [`LockedArray::with_lock`].
    ///
    /// # Errors
    ///
    /// As for [`LockedArray::with_lock`]: [`LockError::OwnerDied`] (with
    /// `f`'s result) if a holder died or panicked, [`LockError::Failed`]
    /// otherwise.
    ///
    /// # Examples
    ///
    /// See [`LockedValue`].
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> LockResult<R> {
        self.array.with_lock(|data| f(&mut data[0]))
    }

    /// Runs `f` on the value if the lock is free now. See
    /// [`LockedArray::try_with_lock`].
    ///
    /// # Errors
    ///
    /// As for [`LockedArray::try_with_lock`].
    ///
    /// # Examples
    ///
    /// ```
    /// let v = forkpool_shm::LockedValue::new(0u8)?;
    /// assert_eq!(v.try_with_lock(|v| *v)?, 0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn try_with_lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> LockResult<R> {
        self.array.try_with_lock(|data| f(&mut data[0]))
    }

    /// Runs `f` on the value, waiting at most `timeout` for the lock. See
    /// [`LockedArray::with_lock_timeout`].
    ///
    /// # Errors
    ///
    /// As for [`LockedArray::with_lock_timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let v = forkpool_shm::LockedValue::new(0u8)?;
    /// assert!(v.with_lock_timeout(Duration::from_millis(10), |v| *v += 1).is_ok());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn with_lock_timeout<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut T) -> R,
    ) -> LockResult<R> {
        self.array
            .with_lock_timeout(timeout, |data| f(&mut data[0]))
    }

    /// Whether the lock is poisoned. See [`LockedArray::is_poisoned`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!forkpool_shm::LockedValue::new(0u8)?.is_poisoned());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.array.is_poisoned()
    }

    /// Clears the poison. See [`LockedArray::clear_poison`].
    ///
    /// # Examples
    ///
    /// ```
    /// let v = forkpool_shm::LockedValue::new(0u8)?;
    /// v.clear_poison();
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn clear_poison(&self) {
        self.array.clear_poison()
    }
}
