//! Descriptor hygiene across forks.
//!
//! Liveness in the pool is by pipe: a worker learns its parent is gone when
//! its task pipe reports EOF, and the zygote when its control socket does.
//! That only works if no other process holds a copy of the parent's ends.
//! Every descriptor the parent side of any pool holds is therefore a
//! [`PoolFd`], listed in one process-wide registry, and the child of
//! [`fork_zygote`] closes all of them first thing. The registry lock is held
//! while a descriptor is created and registered, and while a zygote is
//! forked, so no fork can see a pool descriptor that is not yet listed (all
//! of them are also close-on-exec, for `Command` and friends).
//!
//! Descriptors the user opened (a shared array's memfd, say) are not in the
//! registry and are inherited by the workers, as with any `fork`.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::unistd::{ForkResult, Pid};

static REGISTRY: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

fn registry() -> MutexGuard<'static, BTreeSet<RawFd>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A descriptor held by the parent side of a pool: registered so that
/// zygotes forked later do not inherit it, closed and unregistered together.
#[derive(Debug)]
pub(crate) struct PoolFd(Option<OwnedFd>);

impl PoolFd {
    /// Creates descriptors with `make` and registers them, atomically with
    /// respect to [`fork_zygote`].
    pub(crate) fn create<const N: usize, E>(
        make: impl FnOnce() -> Result<[OwnedFd; N], E>,
    ) -> Result<[PoolFd; N], E> {
        let mut reg = registry();
        let fds = make()?;
        for fd in &fds {
            reg.insert(fd.as_raw_fd());
        }
        Ok(fds.map(|fd| PoolFd(Some(fd))))
    }

    /// Runs `receive` (which may produce descriptors, e.g. `recvmsg` with
    /// `SCM_RIGHTS`) with the registry locked, so the descriptors it yields
    /// can be adopted with [`PoolFd::adopt`] before any fork sees them.
    pub(crate) fn receiving<R>(receive: impl FnOnce(&mut Adopter<'_>) -> R) -> R {
        let mut reg = registry();
        receive(&mut Adopter { reg: &mut reg })
    }
}

/// Registers descriptors while [`PoolFd::receiving`] holds the lock.
pub(crate) struct Adopter<'a> {
    reg: &'a mut BTreeSet<RawFd>,
}

impl Adopter<'_> {
    pub(crate) fn adopt(&mut self, fd: OwnedFd) -> PoolFd {
        self.reg.insert(fd.as_raw_fd());
        PoolFd(Some(fd))
    }
}

impl PoolFd {
    /// Takes the descriptor out of the registry, for the process that keeps
    /// it (the zygote, with its end of the control socket).
    pub(crate) fn into_owned(mut self) -> OwnedFd {
        let fd = self.0.take().expect("open until dropped");
        registry().remove(&fd.as_raw_fd());
        fd
    }
}

impl AsFd for PoolFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_ref().expect("open until dropped").as_fd()
    }
}

impl Drop for PoolFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            // Close while holding the lock: once unlocked, the number may be
            // reused by anyone, and must no longer be in the registry.
            let mut reg = registry();
            reg.remove(&fd.as_raw_fd());
            drop(fd);
        }
    }
}

/// This process's soft `RLIMIT_NOFILE` and how many descriptors it has
/// open, for errors about running out of them.
///
/// Counting reads `/proc/self/fd`, which takes a descriptor itself; when
/// none is left (`EMFILE`), every number below the limit is in use, so the
/// count is the limit.
pub(crate) fn usage() -> (u64, usize) {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    let open = match std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor is listed too.
        Ok(dir) => dir.count().saturating_sub(1),
        Err(_) => usize::try_from(limit).unwrap_or(usize::MAX),
    };
    (limit, open)
}

/// Forks a zygote. In the child, every registered descriptor is closed
/// (except `keep`) and the registry is emptied before `child` runs; the
/// child process ends when `child` does (it is not meant to return).
///
/// # Safety
///
/// The caller may be multithreaded: in the child only this thread exists,
/// and a lock another thread held at the fork stays locked. `child` must not
/// take locks other threads of this process may hold (Rust's stdout and
/// stderr locks among them; glibc's `malloc` is safe, its fork handler
/// resets it), and must end the process with `_exit` rather than return or
/// unwind into code that assumes the parent's threads.
pub(crate) unsafe fn fork_zygote(keep: RawFd, child: impl FnOnce()) -> io::Result<Pid> {
    // The parent's spare frame buffer and spare run memory (each up to
    // `frame::KEEP_MAX`, kept for its next big value) are freed rather than
    // inherited: every process of the new pool would otherwise map them
    // for its whole life.
    crate::frame::free_spares();
    let mut reg = registry();
    // SAFETY: the caller upholds the contract above for `child`; the parent
    // branch only unlocks the registry.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child: pid } => {
            drop(reg); // before `child` (and the descriptors it owns) drops
            Ok(pid)
        }
        ForkResult::Child => {
            for &fd in reg.iter() {
                if fd != keep {
                    // SAFETY: `fd` is a descriptor of another pool's parent
                    // side; in this new process nothing will use it (the
                    // objects owning it are never dropped here: the zygote
                    // ends with `_exit`).
                    unsafe { libc::close(fd) };
                }
            }
            reg.clear();
            // The std mutex is a futex word: unlocking it in the child is a
            // plain store, so nested pools built in a worker can lock it.
            drop(reg);
            child();
            crate::worker::exit(0)
        }
    }
}
