//! Arrays in [`Locked`] mode: a shared array behind a robust,
//! process-shared lock, the counterpart of `multiprocessing.Array(lock=True)`.

use std::time::Duration;

use crate::SharedArray;
#[cfg(doc)]
use crate::ShmError;
use crate::element::Element;
use crate::error::{LockError, LockResult, OwnerDied};
use crate::mode::Locked;
use crate::mutex::{Acquired, RobustMutex, Wait};
use crate::rows::Rows;

/// # Locked mode
///
/// A [`Locked`] array sits behind a lock that every process forked after its
/// creation shares: [`with_lock`](Self::with_lock) runs a closure with the lock
/// held and ordinary slice and `ndarray` view access, for writers whose rows
/// overlap.
///
/// The lock is a `pthread_mutex_t` in the array's shared header page, robust
/// and process-shared. When a process dies holding it (even by `SIGKILL`),
/// the next `with_lock` does not hang, as Python's does: it takes the lock,
/// runs the closure and returns [`LockError::OwnerDied`] with the closure's
/// result and the dead holder's pid, and every later `with_lock` does the
/// same until [`clear_poison`](Self::clear_poison) (like `std::sync::Mutex`'s
/// poisoning, which also applies here when a closure panics).
///
/// A thread that calls `with_lock` inside its own `with_lock` gets
/// [`ShmError::WouldDeadlock`] instead of hanging.
///
/// # Examples
///
/// Eight processes add to one counter; none of the 80 000 increments is lost:
///
/// ```
/// use forkpool_shm::{Locked, SharedArray};
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::{fork, ForkResult};
///
/// let counter = SharedArray::<u64, Locked>::new(&[1])?;
/// let mut children = Vec::new();
/// for _ in 0..8 {
///     // SAFETY: the child only touches the array and then `_exit`s.
///     match unsafe { fork() }.expect("fork") {
///         ForkResult::Child => {
///             for _ in 0..10_000 {
///                 if counter.with_lock(|count| count[0] += 1).is_err() {
///                     // SAFETY: ends the child without running exit handlers.
///                     unsafe { libc::_exit(1) };
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
/// assert_eq!(counter.with_lock(|count| count[0])?, 80_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: Element> SharedArray<T, Locked> {
    fn mutex(&self) -> &RobustMutex {
        &self.region().header().data_lock
    }

    fn run<R>(&self, wait: Wait, f: impl FnOnce(&mut Rows<'_, T>) -> R) -> LockResult<R> {
        let (held, acquired) = self.mutex().hold(wait)?;
        // SAFETY: all rows are in bounds; this thread holds the lock until
        // `held` is dropped, after `f` returns, and every access to a
        // `Locked` array's data goes through the lock.
        let mut all = unsafe { Rows::new(self, 0..self.nrows()) };
        let result = f(&mut all);
        drop(held);
        match acquired {
            Acquired::Clean => Ok(result),
            Acquired::Poisoned { pid, panicked } => {
                Err(LockError::OwnerDied(OwnerDied::new(result, pid, panicked)))
            }
        }
    }

    /// Runs `f` with the lock held, waiting as long as another thread or
    /// process holds it; `f` gets the whole array as an ordinary `&mut [T]`
    /// and `ArrayViewMut` ([`Rows`]), and its result is returned. The lock
    /// is released when `f` returns, and poisoned if `f` panics.
    ///
    /// The data is only reachable inside `f`, so no `&mut` into the shared
    /// memory can outlive the lock, be stored in a `static` or be moved into
    /// a pool's `initializer`: see [`Rows`].
    ///
    /// # Errors
    ///
    /// - [`LockError::OwnerDied`] if a holder died or panicked while holding
    ///   the lock and the poison was not cleared since: `f` ran (on data the
    ///   dead holder may have left half-updated), and its result is inside,
    ///   with the holder's pid;
    /// - [`LockError::Failed`] (and `f` did not run) with
    ///   [`ShmError::WouldDeadlock`] if this thread already holds the lock,
    ///   [`ShmError::LockNotRecoverable`] if the lock was left unusable, or
    ///   [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// A process killed while holding the lock does not block the next one:
    ///
    /// ```
    /// use forkpool_shm::{LockError, Locked, SharedArray};
    /// use nix::sys::signal::{kill, Signal};
    /// use nix::sys::wait::waitpid;
    /// use nix::unistd::{fork, pipe, read, write, ForkResult};
    ///
    /// let array = SharedArray::<i32, Locked>::new(&[4])?;
    /// let (ready_r, ready_w) = pipe()?;
    /// // SAFETY: the child only touches the array and a pipe.
    /// let child = match unsafe { fork() }? {
    ///     ForkResult::Child => {
    ///         let _ = array.with_lock(|data| {
    ///             data[0] = 7;
    ///             write(&ready_w, b"x").expect("write");
    ///             loop {
    ///                 std::thread::park(); // hold the lock until killed
    ///             }
    ///         });
    ///         unreachable!()
    ///     }
    ///     ForkResult::Parent { child } => child,
    /// };
    /// read(&ready_r, &mut [0])?;
    /// kill(child, Signal::SIGKILL)?;
    /// waitpid(child, None)?;
    ///
    /// match array.with_lock(|data| data[0]) {
    ///     Err(LockError::OwnerDied(died)) => {
    ///         assert_eq!(died.pid(), Some(child));
    ///         assert_eq!(died.into_inner(), 7); // the data is intact
    ///     }
    ///     _ => panic!("expected the owner-died report"),
    /// }
    /// array.clear_poison();
    /// assert!(array.with_lock(|_| ()).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut Rows<'_, T>) -> R) -> LockResult<R> {
        self.run(Wait::Forever, f)
    }

    /// Runs `f` with the lock held if the lock is free now, as
    /// [`with_lock`](Self::with_lock) does.
    ///
    /// # Errors
    ///
    /// As for [`with_lock`](Self::with_lock), and [`ShmError::WouldBlock`]
    /// if another thread or process holds the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{LockError, Locked, SharedArray, ShmError};
    ///
    /// let array = SharedArray::<u8, Locked>::new(&[1])?;
    /// array.with_lock(|_| {
    ///     std::thread::scope(|s| {
    ///         s.spawn(|| {
    ///             let busy = array.try_with_lock(|_| ());
    ///             assert!(matches!(busy, Err(LockError::Failed(ShmError::WouldBlock))));
    ///         });
    ///     });
    /// })?;
    /// assert!(array.try_with_lock(|_| ()).is_ok());
    /// # Ok::<(), ShmError>(())
    /// ```
    pub fn try_with_lock<R>(&self, f: impl FnOnce(&mut Rows<'_, T>) -> R) -> LockResult<R> {
        self.run(Wait::No, f)
    }

    /// Runs `f` with the lock held, waiting at most `timeout` for it, as
    /// [`with_lock`](Self::with_lock) does.
    ///
    /// # Errors
    ///
    /// As for [`with_lock`](Self::with_lock), and [`ShmError::LockTimeout`]
    /// if the lock was not free in time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let array = forkpool_shm::SharedArray::<u8, forkpool_shm::Locked>::new(&[1])?;
    /// assert_eq!(array.with_lock_timeout(Duration::from_secs(1), |data| data[0])?, 0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn with_lock_timeout<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Rows<'_, T>) -> R,
    ) -> LockResult<R> {
        self.run(Wait::For(timeout), f)
    }

    /// Whether the lock is poisoned: a holder died or panicked while holding
    /// it, and nobody cleared the poison since.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8, forkpool_shm::Locked>::new(&[1])?;
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
    /// See [`with_lock`](Self::with_lock).
    pub fn clear_poison(&self) {
        self.mutex().clear_poison()
    }
}
