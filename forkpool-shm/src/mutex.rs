//! A robust, process-shared `pthread_mutex_t` that lives in shared memory.
//!
//! `parking_lot` and `std` locks keep their waiters in one address space; a
//! lock shared by forked processes must live in the shared mapping itself.
//! This is POSIX's answer: a `pthread_mutex_t` initialised with
//!
//! - `PTHREAD_PROCESS_SHARED`: usable by every process that maps it;
//! - `PTHREAD_MUTEX_ROBUST`: when the holder dies (even by `SIGKILL`), the
//!   kernel walks its robust list and the next locker gets `EOWNERDEAD`
//!   instead of waiting forever (what Python's `multiprocessing.Lock` does).
//!   That locker calls `pthread_mutex_consistent` and holds the lock as usual;
//!   a locker that unlocks without doing so leaves it `ENOTRECOVERABLE`;
//! - `PTHREAD_MUTEX_ERRORCHECK`: a thread locking twice gets `EDEADLK` instead
//!   of a silent self-deadlock.
//!
//! Beside the mutex live two words the robust protocol lacks: the pid of the
//! current holder (so that `EOWNERDEAD` can name who died) and a sticky
//! poison mark, so that, as with `std::sync::Mutex`, every later locker hears
//! of the death until someone calls `clear_poison`, not only the first one.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::ShmError;

/// A robust, process-shared, error-checking mutex plus its poison mark.
///
/// Only ever used in place, in shared memory, through `&RobustMutex`: every
/// field is interior-mutable, so no reference claims the memory is frozen
/// while other processes change it.
#[repr(C)]
pub(crate) struct RobustMutex {
    raw: UnsafeCell<libc::pthread_mutex_t>,
    /// Pid of the process holding the lock, 0 when free (best effort: set right
    /// after locking, cleared right before unlocking).
    holder: AtomicI32,
    /// 0: not poisoned; otherwise the pid of the holder that died or
    /// panicked, or -1 if it is not known.
    poisoned_by: AtomicI32,
    /// 1 if the poisoning holder panicked rather than died.
    poison_panicked: AtomicU32,
}

// SAFETY: a pthread mutex exists to be used by many threads at once; the
// other fields are atomics. Nothing is reachable through `&RobustMutex` that
// a concurrent user could break.
unsafe impl Sync for RobustMutex {}
// SAFETY: as for `Sync`; the mutex is only ever used in place, in shared
// memory, never moved while in use.
unsafe impl Send for RobustMutex {}

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Cleanly.
    Clean,
    /// Poisoned: a holder died or panicked and nobody cleared the mark since.
    Poisoned { pid: Option<Pid>, panicked: bool },
}

/// How to wait for the lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    No,
    For(Duration),
}

impl RobustMutex {
    /// Initialises a mutex in place.
    ///
    /// # Safety
    ///
    /// `this` must be valid for writes of a `RobustMutex`, aligned, and not in
    /// use by any thread or process (nobody else may have it mapped yet, or
    /// everybody who has must wait until this returns).
    pub(crate) unsafe fn init(this: *mut RobustMutex) -> Result<(), ShmError> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        let os = |call, rc| ShmError::Os {
            call,
            cause: Errno::from_raw(rc),
        };
        // SAFETY: `attr` is a local we initialise before any other use and
        // destroy at the end; `this` is valid and unused, as the caller
        // promises, so initialising the fields and the mutex in place is sound.
        unsafe {
            let rc = libc::pthread_mutexattr_init(attr.as_mut_ptr());
            if rc != 0 {
                return Err(os("pthread_mutexattr_init", rc));
            }
            let attr = attr.as_mut_ptr();
            let result = (|| {
                // Miri runs one process and has neither attribute: there the
                // mutex is a plain error-checking one (its lock tests are not
                // run under Miri).
                #[cfg(not(miri))]
                {
                    let rc = libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED);
                    if rc != 0 {
                        return Err(os("pthread_mutexattr_setpshared", rc));
                    }
                    let rc = libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST);
                    if rc != 0 {
                        return Err(os("pthread_mutexattr_setrobust", rc));
                    }
                }
                let rc = libc::pthread_mutexattr_settype(attr, libc::PTHREAD_MUTEX_ERRORCHECK);
                if rc != 0 {
                    return Err(os("pthread_mutexattr_settype", rc));
                }
                (&raw mut (*this).holder).write(AtomicI32::new(0));
                (&raw mut (*this).poisoned_by).write(AtomicI32::new(0));
                (&raw mut (*this).poison_panicked).write(AtomicU32::new(0));
                let rc =
                    libc::pthread_mutex_init(UnsafeCell::raw_get(&raw const (*this).raw), attr);
                if rc != 0 {
                    return Err(os("pthread_mutex_init", rc));
                }
                Ok(())
            })();
            libc::pthread_mutexattr_destroy(attr);
            result
        }
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.raw.get()
    }

    /// Takes the lock, waiting as `wait` says. On success the calling thread
    /// holds the lock and must call [`unlock`](Self::unlock) later.
    pub(crate) fn lock(&self, wait: Wait) -> Result<Acquired, ShmError> {
        let rc = match wait {
            // SAFETY: the mutex was initialised by `init` before this memory was
            // shared (every constructor does so), and lives as long as `self`.
            Wait::Forever => unsafe { libc::pthread_mutex_lock(self.raw()) },
            // SAFETY: as above.
            Wait::No => unsafe { libc::pthread_mutex_trylock(self.raw()) },
            Wait::For(timeout) => {
                let deadline = SystemTime::now()
                    .checked_add(timeout)
                    .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(i32::MAX as u64))
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let deadline = libc::timespec {
                    tv_sec: deadline.as_secs() as libc::time_t,
                    tv_nsec: deadline.subsec_nanos() as libc::c_long,
                };
                // SAFETY: as above; `deadline` is a valid timespec on the stack.
                unsafe { libc::pthread_mutex_timedlock(self.raw(), &deadline) }
            }
        };
        match rc {
            0 => {}
            libc::EOWNERDEAD => {
                // The previous holder died holding the lock. We hold it now; mark
                // it consistent so that it stays usable, and poison it so that
                // this and every later locker hears of the death.
                let dead = self.holder.load(Ordering::Relaxed);
                // SAFETY: we hold the lock (EOWNERDEAD returns with it held).
                let rc = unsafe { libc::pthread_mutex_consistent(self.raw()) };
                if rc != 0 {
                    // SAFETY: we hold the lock; release it before reporting.
                    unsafe { libc::pthread_mutex_unlock(self.raw()) };
                    return Err(ShmError::Os {
                        call: "pthread_mutex_consistent",
                        cause: Errno::from_raw(rc),
                    });
                }
                self.poison(if dead > 0 { dead } else { -1 }, false);
            }
            libc::ENOTRECOVERABLE => return Err(ShmError::LockNotRecoverable),
            libc::EDEADLK => return Err(ShmError::WouldDeadlock),
            libc::EBUSY => return Err(ShmError::WouldBlock),
            libc::ETIMEDOUT => {
                let timeout = match wait {
                    Wait::For(t) => t,
                    _ => Duration::ZERO,
                };
                return Err(ShmError::LockTimeout(timeout));
            }
            rc => {
                return Err(ShmError::Os {
                    call: "pthread_mutex_lock",
                    cause: Errno::from_raw(rc),
                });
            }
        }
        self.holder
            .store(crate::process::identity().0, Ordering::Relaxed);
        Ok(match self.poisoned_by.load(Ordering::Relaxed) {
            0 => Acquired::Clean,
            pid => Acquired::Poisoned {
                pid: (pid > 0).then(|| Pid::from_raw(pid)),
                panicked: self.poison_panicked.load(Ordering::Relaxed) != 0,
            },
        })
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// The calling thread holds the lock (a successful [`lock`](Self::lock)
    /// not yet matched by an `unlock`).
    pub(crate) unsafe fn unlock(&self) {
        self.holder.store(0, Ordering::Relaxed);
        // SAFETY: the caller holds the lock. An error-checking mutex reports
        // EPERM if that were not so; nothing can be done about it here, and
        // the lock state is unchanged in that case.
        let rc = unsafe { libc::pthread_mutex_unlock(self.raw()) };
        debug_assert_eq!(rc, 0, "pthread_mutex_unlock: {}", Errno::from_raw(rc));
    }

    /// Marks the lock poisoned by `pid` (-1: unknown).
    pub(crate) fn poison(&self, pid: i32, panicked: bool) {
        self.poison_panicked
            .store(u32::from(panicked), Ordering::Relaxed);
        self.poisoned_by.store(pid, Ordering::Release);
    }

    /// Whether the lock is poisoned.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned_by.load(Ordering::Acquire) != 0
    }

    /// Clears the poison mark.
    pub(crate) fn clear_poison(&self) {
        self.poisoned_by.store(0, Ordering::Release);
        self.poison_panicked.store(0, Ordering::Relaxed);
    }
}

/// The lock held for a scope by the current thread: released on drop, and
/// poisoned first if the thread is panicking. A copy inherited through
/// `fork` (the child does not hold the lock) releases nothing.
pub(crate) struct Held<'a> {
    mutex: &'a RobustMutex,
    generation: u64,
    /// The lock belongs to the thread that took it: not `Send`.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl RobustMutex {
    /// Takes the lock, waiting as `wait` says, until the returned value is
    /// dropped (on this thread).
    pub(crate) fn hold(&self, wait: Wait) -> Result<(Held<'_>, Acquired), ShmError> {
        let generation = crate::process::generation();
        let acquired = self.lock(wait)?;
        Ok((
            Held {
                mutex: self,
                generation,
                _not_send: std::marker::PhantomData,
            },
            acquired,
        ))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if crate::process::current_generation() != self.generation {
            return; // inherited through fork: the child does not hold the lock
        }
        if std::thread::panicking() {
            self.mutex.poison(crate::process::identity().0, true);
        }
        // SAFETY: `Held` is only made by `hold` after locking and is dropped
        // once, on the thread that locked (it is not `Send`), in the process
        // that locked (checked above).
        unsafe { self.mutex.unlock() }
    }
}

/// Not under Miri: it has no robust mutex, and locking reads `/proc`.
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    /// A new mutex on the heap, for the test's lifetime.
    fn new_mutex() -> &'static RobustMutex {
        let m = Box::leak(Box::new(std::mem::MaybeUninit::<RobustMutex>::uninit()));
        // SAFETY: the box is fresh, aligned and private to this test.
        unsafe { RobustMutex::init(m.as_mut_ptr()) }.unwrap();
        // SAFETY: initialised just above.
        unsafe { m.assume_init_ref() }
    }

    #[test]
    fn locks_unlocks_and_detects_self_deadlock() {
        let m = new_mutex();
        assert_eq!(m.lock(Wait::Forever).unwrap(), Acquired::Clean);
        assert!(matches!(
            m.lock(Wait::Forever),
            Err(ShmError::WouldDeadlock)
        ));
        // SAFETY: this thread holds the lock.
        unsafe { m.unlock() };
        assert_eq!(m.lock(Wait::No).unwrap(), Acquired::Clean);
        // SAFETY: this thread holds the lock.
        unsafe { m.unlock() };
    }

    #[test]
    fn try_lock_and_timeout_see_a_lock_held_by_another_thread() {
        let m = new_mutex();
        m.lock(Wait::Forever).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(matches!(m.lock(Wait::No), Err(ShmError::WouldBlock)));
                let t = Duration::from_millis(30);
                let start = std::time::Instant::now();
                assert!(matches!(m.lock(Wait::For(t)), Err(ShmError::LockTimeout(d)) if d == t));
                assert!(start.elapsed() >= t);
            });
        });
        // SAFETY: this thread holds the lock.
        unsafe { m.unlock() };
    }

    #[test]
    fn a_thread_that_exits_holding_the_lock_poisons_it() {
        let m = new_mutex();
        std::thread::scope(|s| {
            // The thread ends holding the lock: the robust list hands it on.
            s.spawn(|| m.lock(Wait::Forever).unwrap());
        });
        let me = crate::process::identity().0;
        let acquired = m.lock(Wait::For(Duration::from_secs(5))).unwrap();
        assert_eq!(
            acquired,
            Acquired::Poisoned {
                pid: Some(Pid::from_raw(me)),
                panicked: false
            }
        );
        assert!(m.is_poisoned());
        m.clear_poison();
        assert!(!m.is_poisoned());
        // SAFETY: this thread holds the lock.
        unsafe { m.unlock() };
        assert_eq!(m.lock(Wait::No).unwrap(), Acquired::Clean);
        // SAFETY: this thread holds the lock.
        unsafe { m.unlock() };
    }
}
