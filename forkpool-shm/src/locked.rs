//! [`LockedArray`]: a shared array behind a robust, process-shared lock, the
//! counterpart of `multiprocessing.Array(lock=True)`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::path::Path;
use std::time::Duration;

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use crate::SharedArray;
use crate::element::Element;
use crate::error::{LockError, LockResult, OwnerDied, ShmError};
use crate::mutex::{Acquired, RobustMutex, Wait};
use crate::process;

/// A shared array behind a lock that every process forked after its creation
/// shares: `lock()` returns a guard with ordinary slice and `ndarray` view
/// access, for writers whose rows overlap.
///
/// The lock is a `pthread_mutex_t` in the array's shared header page, robust
/// and process-shared. When a process dies holding it (even by `SIGKILL`),
/// the next `lock()` does not hang, as Python's does: it takes the lock and
/// returns [`LockError::OwnerDied`] with the guard and the dead holder's pid,
/// and every later `lock()` does the same until
/// [`clear_poison`](Self::clear_poison) (like `std::sync::Mutex`'s poisoning,
/// which also applies here when a holder panics).
///
/// A thread that calls `lock()` while holding the lock gets
/// [`ShmError::WouldDeadlock`] instead of hanging. Guards cannot be sent to
/// another thread (the lock belongs to the thread that took it), and a guard
/// copied into a child by `fork` must not be used there: doing so panics.
///
/// # Examples
///
/// Eight processes add to one counter; none of the 80 000 increments is lost:
///
/// ```
/// use forkpool_shm::LockedArray;
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::{fork, ForkResult};
///
/// let counter = LockedArray::<u64>::new(&[1])?;
/// let mut children = Vec::new();
/// for _ in 0..8 {
///     // SAFETY: the child only touches the array and then `_exit`s.
///     match unsafe { fork() }.expect("fork") {
///         ForkResult::Child => {
///             for _ in 0..10_000 {
///                 match counter.lock() {
///                     Ok(mut guard) => guard[0] += 1,
///                     // SAFETY: ends the child without running exit handlers.
///                     Err(_) => unsafe { libc::_exit(1) },
///                 }
///             }
///             // SAFETY: as above.
///             unsafe { libc::_exit(0) };
///         }
///         ForkResult::Parent { child } => children.push(child),
///     }
/// }
/// for child in children {
///     assert_eq!(waitpid(child, None)?, WaitStatus::Exited(child, 0));
/// }
/// assert_eq!(counter.lock()?[0], 80_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LockedArray<T: Element> {
    array: SharedArray<T>,
}

impl<T: Element> Clone for LockedArray<T> {
    fn clone(&self) -> Self {
        LockedArray {
            array: self.array.clone(),
        }
    }
}

impl<T: Element> fmt::Debug for LockedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedArray")
            .field("array", &self.array)
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl<T: Element> LockedArray<T> {
    /// Creates a zero-filled anonymous array of the given shape behind a new
    /// lock. Memory as for [`SharedArray::new`].
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`], e.g. [`ShmError::OutOfMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<f64>::new(&[2, 3])?;
    /// assert_eq!(array.lock()?.len(), 6);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn new(shape: &[usize]) -> Result<Self, ShmError> {
        Ok(Self::from_shared(SharedArray::new(shape)?))
    }

    /// Wraps an array nobody else can reach (freshly created or opened), whose
    /// header lock was initialised with it.
    pub(crate) fn from_shared(array: SharedArray<T>) -> Self {
        LockedArray { array }
    }

    fn mutex(&self) -> &RobustMutex {
        &self.array.region().header().data_lock
    }

    fn acquire(&self, wait: Wait) -> LockResult<ArrayGuard<'_, T>> {
        let generation = process::generation();
        let acquired = self.mutex().lock(wait)?;
        let guard = ArrayGuard {
            array: &self.array,
            mutex: self.mutex(),
            generation,
            _not_send: PhantomData,
        };
        match acquired {
            Acquired::Clean => Ok(guard),
            Acquired::Poisoned { pid, panicked } => {
                Err(LockError::OwnerDied(OwnerDied::new(guard, pid, panicked)))
            }
        }
    }

    /// Takes the lock, waiting as long as another thread or process holds it.
    ///
    /// # Errors
    ///
    /// - [`LockError::OwnerDied`] if a holder died or panicked while holding
    ///   the lock and the poison was not cleared since: the lock is held and
    ///   the guard is inside, with the holder's pid;
    /// - [`LockError::Failed`] with [`ShmError::WouldDeadlock`] if this thread
    ///   already holds the lock, [`ShmError::LockNotRecoverable`] if the lock
    ///   was left unusable, or [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// A process killed while holding the lock does not block the next one:
    ///
    /// ```
    /// use forkpool_shm::{LockError, LockedArray};
    /// use nix::sys::signal::{kill, Signal};
    /// use nix::sys::wait::waitpid;
    /// use nix::unistd::{fork, pipe, read, write, ForkResult};
    ///
    /// let array = LockedArray::<i32>::new(&[4])?;
    /// let (ready_r, ready_w) = pipe()?;
    /// // SAFETY: the child only touches the array and a pipe.
    /// let child = match unsafe { fork() }? {
    ///     ForkResult::Child => {
    ///         let mut guard = array.lock().expect("lock");
    ///         guard[0] = 7;
    ///         write(&ready_w, b"x").expect("write");
    ///         loop {
    ///             std::thread::park(); // hold the lock until killed
    ///         }
    ///     }
    ///     ForkResult::Parent { child } => child,
    /// };
    /// read(&ready_r, &mut [0])?;
    /// kill(child, Signal::SIGKILL)?;
    /// waitpid(child, None)?;
    ///
    /// match array.lock() {
    ///     Err(LockError::OwnerDied(died)) => {
    ///         assert_eq!(died.pid(), Some(child.as_raw()));
    ///         assert_eq!(died.into_inner()[0], 7); // the data is intact
    ///     }
    ///     _ => panic!("expected the owner-died report"),
    /// }
    /// array.clear_poison();
    /// assert!(array.lock().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        self.acquire(Wait::Forever)
    }

    /// Takes the lock if it is free.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Self::lock), and [`ShmError::WouldBlock`] if another
    /// thread or process holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{LockError, LockedArray, ShmError};
    ///
    /// let array = LockedArray::<u8>::new(&[1])?;
    /// let held = array.lock()?;
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         assert!(matches!(array.try_lock(), Err(LockError::Failed(ShmError::WouldBlock))));
    ///     });
    /// });
    /// drop(held);
    /// assert!(array.try_lock().is_ok());
    /// # Ok::<(), ShmError>(())
    /// ```
    pub fn try_lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        self.acquire(Wait::No)
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for [`lock`](Self::lock), and [`ShmError::LockTimeout`] if the lock
    /// was not free in time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[1])?;
    /// let guard = array.lock_timeout(Duration::from_secs(1))?;
    /// assert_eq!(guard[0], 0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<ArrayGuard<'_, T>> {
        self.acquire(Wait::For(timeout))
    }

    /// Whether the lock is poisoned: a holder died or panicked while holding
    /// it, and nobody cleared the poison since.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[1])?;
    /// assert!(!array.is_poisoned());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.mutex().is_poisoned()
    }

    /// Clears the poison: call it once the data has been checked or repaired.
    ///
    /// # Examples
    ///
    /// See [`lock`](Self::lock).
    pub fn clear_poison(&self) {
        self.mutex().clear_poison()
    }

    /// The shape. See [`SharedArray::shape`].
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[4, 2])?;
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
    /// assert_eq!(forkpool_shm::LockedArray::<u8>::new(&[4, 2])?.ndim(), 2);
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
    /// assert_eq!(forkpool_shm::LockedArray::<u8>::new(&[4, 2])?.len(), 8);
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
    /// assert!(forkpool_shm::LockedArray::<u8>::new(&[0])?.is_empty());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// The number of rows.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::LockedArray::<u8>::new(&[4, 2])?.nrows(), 4);
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
    /// assert_eq!(forkpool_shm::LockedArray::<u8>::new(&[4, 2])?.row_len(), 2);
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
    /// assert_eq!(forkpool_shm::LockedArray::<u16>::new(&[4, 2])?.size_bytes(), 16);
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
    /// assert!(forkpool_shm::LockedArray::<u8>::new(&[1])?.path().is_none());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn path(&self) -> Option<&Path> {
        self.array.path()
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
    /// forkpool_shm::LockedArray::<u8>::new(&[1])?.flush()?;
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
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[2])?;
    /// assert!(array.expect_shape(&[2]).is_ok());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn expect_shape(self, expected: &[usize]) -> Result<Self, ShmError> {
        Ok(Self::from_shared(self.array.expect_shape(expected)?))
    }
}

/// The lock of a [`LockedArray`], held: ordinary slice (`Deref<Target = [T]>`)
/// and `ndarray` view access to the whole array. Unlocks on drop; poisons
/// the lock if dropped while the thread panics.
///
/// # Examples
///
/// ```
/// use ndarray::Ix2;
/// let array = forkpool_shm::LockedArray::<f64>::new(&[2, 3])?;
/// let mut guard = array.lock()?;
/// guard.row_mut(1).fill(1.0);
/// let view = guard.view().into_dimensionality::<Ix2>().unwrap();
/// assert_eq!(view.row(1).sum(), 3.0);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub struct ArrayGuard<'a, T: Element> {
    array: &'a SharedArray<T>,
    mutex: &'a RobustMutex,
    generation: u64,
    /// The lock belongs to the thread that took it: not `Send`.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared reference to the guard only gives `&[T]`, `&T` and
// `ArrayView`s, all of which are fine to share between threads (`T: Sync`);
// unlocking needs the guard by value, which `!Send` keeps on its thread.
unsafe impl<T: Element> Sync for ArrayGuard<'_, T> {}

impl<T: Element> ArrayGuard<'_, T> {
    fn check_owner(&self) {
        assert!(
            process::current_generation() == self.generation,
            "this lock guard was inherited through fork; the child does not hold the lock"
        );
    }

    fn rows_range(&self, rows: &Range<usize>) -> Range<usize> {
        let nrows = self.array.nrows();
        assert!(
            rows.start <= rows.end && rows.end <= nrows,
            "rows {rows:?} are out of bounds for an array of {nrows} rows"
        );
        let row_len = self.array.row_len();
        rows.start * row_len..rows.end * row_len
    }

    /// The array's shape.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[2, 3])?;
    /// assert_eq!(array.lock()?.shape(), &[2, 3]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// Rows `[rows.start, rows.end)` as a slice.
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds, or in a child that inherited the guard
    /// through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.lock()?.rows(1..3), [0; 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn rows(&self, rows: Range<usize>) -> &[T] {
        let range = self.rows_range(&rows);
        &self[range]
    }

    /// Rows `[rows.start, rows.end)` as a mutable slice.
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds, or in a child that inherited the guard
    /// through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[3, 2])?;
    /// array.lock()?.rows_mut(1..3).fill(5);
    /// assert_eq!(*array.lock()?, [0, 0, 5, 5, 5, 5]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn rows_mut(&mut self, rows: Range<usize>) -> &mut [T] {
        let range = self.rows_range(&rows);
        &mut self[range]
    }

    /// Row `row` as a slice.
    ///
    /// # Panics
    ///
    /// If `row` is out of bounds, or in a child that inherited the guard
    /// through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<u8>::new(&[3, 2])?;
    /// assert_eq!(array.lock()?.row(2), [0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row(&self, row: usize) -> &[T] {
        self.rows(row..row + 1)
    }

    /// Row `row` as a mutable slice.
    ///
    /// # Panics
    ///
    /// If `row` is out of bounds, or in a child that inherited the guard
    /// through `fork`.
    ///
    /// # Examples
    ///
    /// See [`ArrayGuard`].
    pub fn row_mut(&mut self, row: usize) -> &mut [T] {
        self.rows_mut(row..row + 1)
    }

    /// The whole array as an `ndarray` view.
    ///
    /// # Panics
    ///
    /// In a child that inherited the guard through `fork`.
    ///
    /// # Examples
    ///
    /// See [`ArrayGuard`].
    pub fn view(&self) -> ArrayView<'_, T, IxDyn> {
        self.check_owner();
        // SAFETY: the lock is held by this thread, and every access to a
        // `LockedArray`'s data goes through the lock; the memory is a live,
        // aligned block of the array's shape.
        unsafe { crate::view::shared(self.array.as_ptr(), self.array.shape()) }
    }

    /// The whole array as a mutable `ndarray` view.
    ///
    /// # Panics
    ///
    /// In a child that inherited the guard through `fork`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::LockedArray::<i64>::new(&[2, 2])?;
    /// let mut guard = array.lock()?;
    /// guard.view_mut()[[1, 0]] = 3;
    /// assert_eq!(guard[2], 3);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, IxDyn> {
        self.check_owner();
        // SAFETY: as in `view`, and `&mut self` makes the borrow unique in
        // this process.
        unsafe { crate::view::exclusive(self.array.as_mut_ptr(), self.array.shape()) }
    }
}

impl<T: Element> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.check_owner();
        // SAFETY: as in `view`: the lock is held, so nobody else accesses the
        // data while this borrow of the guard lives.
        unsafe { std::slice::from_raw_parts(self.array.as_ptr(), self.array.len()) }
    }
}

impl<T: Element> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.check_owner();
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique in
        // this process.
        unsafe { std::slice::from_raw_parts_mut(self.array.as_mut_ptr(), self.array.len()) }
    }
}

impl<T: Element> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard")
            .field("shape", &self.array.shape())
            .finish_non_exhaustive()
    }
}

impl<T: Element> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        if process::current_generation() != self.generation {
            return; // inherited through fork: the child does not hold the lock
        }
        if std::thread::panicking() {
            self.mutex.poison(process::identity().0, true);
        }
        // SAFETY: the guard exists only while this thread holds the lock
        // (made after a successful lock, not `Send`, dropped once).
        unsafe { self.mutex.unlock() }
    }
}
