//! [`PoolBuilder`]: how many workers, what each runs first, when to recycle.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::collector::{self, Shared};
use crate::error::{Error, Result};
use crate::fds::{PoolFd, fork_zygote};
use crate::pool::Pool;
use crate::scheduler::State;
use crate::worker::Initializer;
use crate::zygote;

/// Configures and starts a [`Pool`], like the arguments of Python's
/// `multiprocessing.Pool(processes, initializer, initargs, maxtasksperchild)`.
///
/// # Examples
///
/// ```
/// use std::sync::OnceLock;
///
/// static SCALE: OnceLock<u64> = OnceLock::new();
///
/// # fn main() -> Result<(), forkpool::Error> {
/// let factor = 3;
/// let pool = forkpool::Pool::builder()
///     .processes(2)
///     // Runs once in every worker, after the fork; `factor` crosses the
///     // fork for free.
///     .initializer(move || {
///         SCALE.set(factor).unwrap();
///     })
///     .max_tasks_per_child(1000)
///     .build()?;
/// let out = pool.map(|x: u64| x * SCALE.get().unwrap(), 1..=4)?;
/// assert_eq!(out, [3, 6, 9, 12]);
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until .build()"]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<Initializer>,
    max_tasks_per_child: Option<usize>,
    start_timeout: Duration,
    task_timeout: Option<Duration>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.initializer.as_ref().map(|_| ".."))
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("start_timeout", &self.start_timeout)
            .field("task_timeout", &self.task_timeout)
            .finish()
    }
}

/// The builder of a pool with the default settings: one worker per
/// available CPU, no initializer, no recycling (as `Pool::builder()`).
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::PoolBuilder::default().processes(1).build()?;
/// assert_eq!(pool.processes(), 1);
/// # Ok(()) }
/// ```
impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder::new()
    }
}

impl PoolBuilder {
    /// How long [`build`](Self::build) waits for the workers to start,
    /// unless told otherwise with [`start_timeout`](Self::start_timeout).
    pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

    pub(crate) fn new() -> Self {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            start_timeout: Self::DEFAULT_START_TIMEOUT,
            task_timeout: None,
        }
    }

    /// Number of worker processes (default: the available parallelism).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A closure every worker runs once, after the fork and before its first
    /// task (replacement workers run it again). What it captures crosses
    /// the fork for free; the usual pattern stores a handle in a `static`
    /// [`OnceLock`](std::sync::OnceLock) that the pool's functions read.
    ///
    /// If it panics, [`build`](Self::build) returns
    /// [`Error::Initializer`] with the panic message.
    pub fn initializer<F: FnMut() + 'static>(self, mut f: F) -> Self {
        self.try_initializer(move || {
            f();
            Ok::<(), String>(())
        })
    }

    /// Like [`initializer`](Self::initializer), for one that can fail: an
    /// `Err` fails [`build`](Self::build) with [`Error::Initializer`]
    /// carrying the error's message.
    ///
    /// ```
    /// let err = forkpool::Pool::builder()
    ///     .processes(1)
    ///     .try_initializer(|| std::fs::read("/no/such/file").map(drop))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("No such file"), "{err}");
    /// ```
    pub fn try_initializer<F, E>(mut self, mut f: F) -> Self
    where
        F: FnMut() -> std::result::Result<(), E> + 'static,
        E: fmt::Display,
    {
        self.initializer = Some(Box::new(move || f().map_err(|e| e.to_string())));
        self
    }

    /// Replace each worker after it has run this many tasks (a task is one
    /// chunk of a map), as Python's `maxtasksperchild`: a way to return
    /// memory a long-lived worker holds. Default: never.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// How long [`build`](Self::build) waits for every worker to start (to
    /// be forked and run its initializer) before it gives up with
    /// [`Error::StartTimeout`], which names the workers it was waiting
    /// for. Default: [`DEFAULT_START_TIMEOUT`](Self::DEFAULT_START_TIMEOUT) (60 s), generous for an
    /// initializer that loads a model; lower it where a stuck start must be
    /// noticed sooner.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let err = forkpool::Pool::builder()
    ///     .processes(1)
    ///     .initializer(|| std::thread::sleep(Duration::from_secs(5)))
    ///     .start_timeout(Duration::from_millis(100))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, forkpool::Error::StartTimeout { .. }));
    /// assert!(err.to_string().contains("initializer"), "{err}");
    /// ```
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.start_timeout = limit;
        self
    }

    /// A time limit for each task (one chunk of a map, one `apply`): a task
    /// that runs longer, or whose worker is stopped (SIGSTOP) that long, has
    /// its worker killed and replaced, and fails alone with
    /// [`Error::TaskTimeout`] naming its item, the worker's pid and the
    /// limit. Every other task goes on. The limit is per task, not per
    /// call: a map of many tasks may take far longer in all. Default: none,
    /// as Python's `Pool`.
    ///
    /// The clock of a task starts when the pool writes it to an idle
    /// worker: with a limit, each worker holds one task at a time (without
    /// one, short tasks are queued at a worker in batches). So tiny tasks
    /// cost a round trip each; give them a `chunksize`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn work(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::builder()
    ///     .processes(2)
    ///     .task_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// let out: Vec<_> = pool.imap(work, [1, 60_000, 2], 1).collect();
    /// assert_eq!(*out[0].as_ref().unwrap(), 1);
    /// assert!(matches!(out[1], Err(forkpool::Error::TaskTimeout { item: 1, .. })));
    /// assert_eq!(*out[2].as_ref().unwrap(), 2);
    /// # Ok(()) }
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Forks the zygote, which forks the workers; returns once every
    /// worker's initializer has run.
    ///
    /// Memory the workers inherit is the parent's as of this call (the
    /// zygote is forked now; later workers are forked from it). Shared
    /// mappings (`MAP_SHARED`) stay shared.
    ///
    /// # Errors
    ///
    /// [`Error::Initializer`] if an initializer panicked or returned an
    /// error, or workers running it died the same way several times in a
    /// row; [`Error::Broken`] if workers died that way with no initializer;
    /// [`Error::StartTimeout`] if the workers were not all ready within
    /// [`start_timeout`](Self::start_timeout);
    /// [`Error::DescriptorLimit`] if descriptors ran out; [`Error::Io`] if
    /// another pipe, socket or fork call failed; [`Error::Config`] if
    /// `processes` or `max_tasks_per_child` is zero.
    pub fn build(self) -> Result<Pool> {
        let processes = match self.processes {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if processes == 0 {
            return Err(Error::Config {
                reason: "processes must be at least 1".into(),
            });
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::Config {
                reason: "task_timeout must be longer than zero (or unset)".into(),
            });
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::Config {
                reason: "max_tasks_per_child must be at least 1 (or unset)".into(),
            });
        }
        ignore_sigpipe();
        // Here, in the parent, before any fork: workers must not touch the
        // panic-hook lock (see `worker`'s module docs).
        crate::worker::install_panic_hook();

        let [ours, theirs] = PoolFd::create(|| {
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map(|(a, b)| [a, b])
        })
        .map_err(|e| Error::from_call("creating the zygote's control socket", "socketpair", e))?;
        let [wake] = PoolFd::create(|| {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map(|e| [OwnedFd::from(e)])
        })
        .map_err(|e| Error::from_call("creating the collector's eventfd", "eventfd", e))?;

        let has_initializer = self.initializer.is_some();
        let init = self
            .initializer
            .unwrap_or_else(|| Box::new(|| Ok::<(), String>(())));
        let keep = theirs.as_fd().as_raw_fd();
        // SAFETY: the child runs `zygote::run`, which is written for a child
        // of a possibly multithreaded parent (no locks other threads may
        // hold, no printing, ends in `_exit`), and never returns.
        let zygote = unsafe { fork_zygote(keep, move || zygote::run(theirs.into_owned(), init)) }
            .map_err(|e| Error::io("forking the zygote", e))?;

        let mut state = State::new(ours, processes, self.max_tasks_per_child);
        state.task_timeout = self.task_timeout;
        let shared = Arc::new(Shared::new(state, wake, zygote, has_initializer));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let for_thread = shared.clone();
        let collector = std::thread::Builder::new()
            .name("forkpool-collector".into())
            .spawn(move || collector::run(for_thread, tx));
        let collector = match collector {
            Ok(handle) => handle,
            Err(e) => {
                // Closing our control socket end makes the zygote exit.
                let _ = nix::sys::signal::kill(zygote, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(zygote, None);
                return Err(Error::io("starting the collector thread", e));
            }
        };
        let started = match rx.recv_timeout(self.start_timeout) {
            Ok(started) => started,
            Err(RecvTimeoutError::Timeout) => Err(Error::StartTimeout {
                waited: self.start_timeout,
                waiting_for: collector::waiting_for(&shared.lock()),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Broken {
                reason: "the collector thread ended during start-up".into(),
            }),
        };
        let pool = Pool::from_parts(shared, collector, processes);
        match started {
            Ok(()) => Ok(pool),
            Err(e) => {
                pool.terminate();
                Err(e)
            }
        }
    }
}

/// Writes to a pipe whose reader died must fail with `EPIPE`, not kill the
/// program: Rust's runtime already ignores `SIGPIPE` in `main`; this covers
/// programs whose `main` is not Rust's.
fn ignore_sigpipe() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: querying (null new action) only fills `current`.
    let rc = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), current.as_mut_ptr()) };
    if rc != 0 {
        return;
    }
    // SAFETY: sigaction returned 0, so it initialized `current`.
    let current = unsafe { current.assume_init() };
    if current.sa_sigaction == libc::SIG_DFL {
        let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { sigaction(Signal::SIGPIPE, &ign) };
    }
}
