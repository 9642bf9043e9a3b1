//! The one error type of the pool, and how a worker process ended.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;

/// What went wrong, in the words of the user's program: which item, which
/// worker pid, which signal.
///
/// Task-level errors ([`Panicked`](Error::Panicked),
/// [`WorkerDied`](Error::WorkerDied), [`Decode`](Error::Decode),
/// [`Encode`](Error::Encode)) carry the index of the input item they belong
/// to, counted from 0 in the order the items were given. The pool stays
/// usable after any of them.
///
/// `Error` is `Clone` because one event (a worker's death) fails every item
/// the worker held, and each of them reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The function panicked on this item. The worker caught the panic and
    /// went on serving; the other items of the task are unaffected.
    #[error("item {item}: the function panicked in worker {pid}: {message}")]
    Panicked {
        /// Index of the input item.
        item: usize,
        /// Pid of the worker that ran it.
        pid: Pid,
        /// The panic message, with the source location when known.
        message: String,
    },

    /// The worker holding this item died before returning its result
    /// (killed by a signal such as SIGKILL from the OOM killer, `abort`,
    /// `exit`). A replacement worker has been started.
    #[error("item {item}: worker {pid} {cause} while holding it{}", peak_note(*peak_rss))]
    WorkerDied {
        /// Index of the input item.
        item: usize,
        /// Pid of the worker that died.
        pid: Pid,
        /// How it ended.
        cause: ExitCause,
        /// The most memory the worker ever held resident (its peak RSS), in
        /// bytes, when known: with SIGKILL, a peak close to the machine's
        /// (or the cgroup's) memory says the OOM killer ended it.
        peak_rss: Option<u64>,
    },

    /// A value could not be decoded: the argument in the worker, or the
    /// result in the parent. The frame that carried it was well formed; the
    /// bytes did not match the type (for example a `Deserialize` impl that
    /// does not mirror its `Serialize`).
    #[error(
        "item {item}: could not decode the {what} as `{type_name}` from {bytes} bytes: {reason}"
    )]
    Decode {
        /// Index of the input item (for an argument, the first item that
        /// could not be decoded; the rest of its task is not run).
        item: usize,
        /// `"argument"` or `"result"`.
        what: &'static str,
        /// The Rust type that was expected.
        type_name: &'static str,
        /// How many bytes were left to decode from.
        bytes: usize,
        /// Why, in words (the type's own serde error, or what was wrong
        /// with the bytes).
        reason: String,
    },

    /// A value could not be encoded (its `Serialize` impl failed, for
    /// example a sequence of unknown length).
    #[error("item {item}: could not encode the {what} of type `{type_name}`: {reason}")]
    Encode {
        /// Index of the input item.
        item: usize,
        /// `"argument"` or `"result"`.
        what: &'static str,
        /// The Rust type being encoded.
        type_name: &'static str,
        /// Why, in words (the type's own serde error, or what was wrong
        /// with the bytes).
        reason: String,
    },

    /// A frame on a worker's pipe was malformed or cut short. The worker
    /// is replaced; its tasks fail with this error.
    #[error("bad frame from worker {pid}: {detail}")]
    Frame {
        /// Pid of the worker on the other end of the pipe.
        pid: Pid,
        /// What was wrong, with the byte counts.
        detail: String,
    },

    /// The initializer panicked or returned an error (the message says
    /// what it reported), or workers running it died the same way
    /// (killed, `exit`, `abort`) three times in a row (the message names
    /// their pids and how they ended; a single death before READY is just
    /// replaced). Returned by [`PoolBuilder::build`](crate::PoolBuilder::build),
    /// or by every later call if it happened in a replacement worker.
    #[error("the initializer failed in worker {pid}: {message}")]
    Initializer {
        /// Pid of the worker.
        pid: Pid,
        /// The panic or error message, or how the worker ended.
        message: String,
    },

    /// The task ran longer than the pool's
    /// [`task_timeout`](crate::PoolBuilder::task_timeout): its worker was
    /// killed (a stopped worker too) and replaced. Only this task failed;
    /// the tasks queued behind it in that worker went back to the queue
    /// and run elsewhere. Every item of the task gets this error.
    #[error(
        "item {item}: the task ran longer than its {limit:?} limit in worker {pid} \
         (it had run {ran:?}); the worker was killed and replaced"
    )]
    TaskTimeout {
        /// Index of the input item.
        item: usize,
        /// Pid of the worker that ran it (killed since).
        pid: Pid,
        /// The limit it broke.
        limit: Duration,
        /// How long it had been running when the pool killed it.
        ran: Duration,
    },

    /// [`PoolBuilder::build`](crate::PoolBuilder::build) gave up waiting
    /// for the workers to start, after
    /// [`start_timeout`](crate::PoolBuilder::start_timeout). Nothing is
    /// left running.
    #[error(
        "the pool did not start within {waited:?}: {waiting_for} \
         (raise PoolBuilder::start_timeout if the initializer is slow)"
    )]
    StartTimeout {
        /// How long `build()` waited.
        waited: Duration,
        /// What it was waiting for: which workers had not reported ready,
        /// which slots had no worker yet.
        waiting_for: String,
    },

    /// The process ran out of file descriptors (`RLIMIT_NOFILE`) while the
    /// pool needed one: to build the pool, or to receive a worker's pipe
    /// ends. The pool that hit it cleans up: `build()` returns this error,
    /// a running pool becomes broken with it. Nothing leaks.
    #[error(
        "{call} failed with {name} ({detail}): out of file descriptors; \
         RLIMIT_NOFILE is {limit} and {open} are open in the {process}. \
         Raise the limit (`ulimit -n`, setrlimit) or close descriptors",
        name = errno_name(*.errno)
    )]
    DescriptorLimit {
        /// The system call that failed, such as `"pipe2"`, `"socketpair"`
        /// or `"recvmsg"`.
        call: &'static str,
        /// Its `errno` (`EMFILE`, `ENFILE`), or the one that cut a
        /// message's descriptors short.
        errno: i32,
        /// What was being done, and what arrived.
        detail: String,
        /// The soft `RLIMIT_NOFILE` of the process that hit it.
        limit: u64,
        /// How many descriptors that process had open.
        open: usize,
        /// `"parent"` (the program), `"zygote"` or `"worker"`.
        process: &'static str,
    },

    /// The pool was closed with [`Pool::close`](crate::Pool::close): it
    /// finishes the work it has, but takes no more.
    #[error("the pool is closed: it takes no new work (build a new pool)")]
    Closed,

    /// The pool was terminated (by [`Pool::terminate`](crate::Pool::terminate)
    /// or by being dropped) before this work finished.
    #[error("the pool was terminated before this work finished")]
    Terminated,

    /// The pool cannot work any more: its zygote died, a worker could not
    /// be forked, or (with no initializer) three workers in a row died the
    /// same way before reporting ready. Build a new pool.
    #[error("the pool is broken and cannot run work: {reason}")]
    Broken {
        /// Why.
        reason: String,
    },

    /// [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout) waited
    /// this long without the result arriving. The result can still be
    /// fetched later.
    #[error("no result after {waited:?}; the work is still running, ask again later")]
    Timeout {
        /// How long the call waited.
        waited: Duration,
    },

    /// The work was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel),
    /// or its handle dropped) before it finished: its queued tasks were
    /// dropped without running.
    #[error(
        "cancelled after {completed} of {items} items had finished; the rest did not run or were discarded"
    )]
    Cancelled {
        /// Items whose results had arrived when it was cancelled.
        completed: usize,
        /// Items of the work.
        items: usize,
    },

    /// The result was already taken out of this handle.
    #[error("the result was already taken from this handle")]
    AlreadyTaken,

    /// The caller's input iterator panicked while producing this item (in
    /// `map`, `imap`, `imap_unordered` and their variants). The results of
    /// the items before it are delivered first; items already pulled into
    /// the same chunk are not run (as Python's `imap` does with a chunk
    /// whose input raised); nothing after it is pulled.
    #[error("item {item}: the input iterator panicked: {message}")]
    InputPanicked {
        /// Index of the item whose production panicked.
        item: usize,
        /// The panic message.
        message: String,
    },

    /// The pool's configuration is invalid (zero processes, say).
    #[error("invalid pool configuration: {reason}")]
    Config {
        /// What is wrong and what to do.
        reason: String,
    },

    /// [`Pool::join`](crate::Pool::join) was called on a pool that is still
    /// running: call [`Pool::close`](crate::Pool::close) or
    /// [`Pool::terminate`](crate::Pool::terminate) first.
    #[error("join() needs close() or terminate() first: the pool is still running")]
    StillRunning,

    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What the pool was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            source: Arc::new(source.into()),
        }
    }

    /// [`Error::DescriptorLimit`] for `call` in this process when `errno`
    /// says descriptors ran out (`EMFILE`, `ENFILE`), [`Error::Io`] (with
    /// `op`) otherwise.
    pub(crate) fn from_call(
        op: &'static str,
        call: &'static str,
        errno: nix::errno::Errno,
    ) -> Self {
        match errno {
            nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE => {
                let (limit, open) = crate::fds::usage();
                Error::DescriptorLimit {
                    call,
                    errno: errno as i32,
                    detail: op.to_string(),
                    limit,
                    open,
                    process: "parent",
                }
            }
            _ => Error::io(op, errno),
        }
    }

    /// The index of the input item this error belongs to, for task-level
    /// errors.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(1)?;
    /// let err = pool.map(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4).unwrap_err();
    /// assert_eq!(err.item(), Some(2));
    /// # Ok(()) }
    /// ```
    pub fn item(&self) -> Option<usize> {
        match self {
            Error::Panicked { item, .. }
            | Error::WorkerDied { item, .. }
            | Error::Decode { item, .. }
            | Error::Encode { item, .. }
            | Error::TaskTimeout { item, .. }
            | Error::InputPanicked { item, .. } => Some(*item),
            _ => None,
        }
    }

    /// Returns the same error for another item (used when one event fails
    /// every item of a task).
    pub(crate) fn for_item(&self, index: usize) -> Self {
        let mut e = self.clone();
        match &mut e {
            Error::Panicked { item, .. }
            | Error::WorkerDied { item, .. }
            | Error::Decode { item, .. }
            | Error::Encode { item, .. }
            | Error::TaskTimeout { item, .. } => *item = index,
            _ => {}
        }
        e
    }
}

/// The tail of a `WorkerDied` message: the peak memory, when known.
fn peak_note(peak_rss: Option<u64>) -> String {
    match peak_rss {
        Some(bytes) => format!(
            "; its peak memory (RSS) was {:.1} MiB",
            bytes as f64 / (1u64 << 20) as f64
        ),
        None => String::new(),
    }
}

/// The symbolic name of an `errno` value, such as `EMFILE`.
pub(crate) fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// How a worker process ended, as its zygote saw it in `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitCause {
    /// It called `exit` (or returned from `main`) with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal number (`9` is SIGKILL).
        signal: i32,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
}

impl ExitCause {
    /// The signal's name, such as `"SIGKILL"`, if a signal ended the
    /// process.
    ///
    /// ```
    /// let cause = forkpool::ExitCause::Signaled { signal: 9, core_dumped: false };
    /// assert_eq!(cause.signal_name(), Some("SIGKILL"));
    /// assert_eq!(forkpool::ExitCause::Exited(3).signal_name(), None);
    /// ```
    pub fn signal_name(&self) -> Option<&'static str> {
        match self {
            ExitCause::Signaled { signal, .. } => Some(
                nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("an unknown signal"),
            ),
            ExitCause::Exited(_) => None,
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCause::Exited(code) => write!(f, "exited with status {code}"),
            ExitCause::Signaled {
                signal,
                core_dumped,
            } => {
                let name = self.signal_name().unwrap_or("an unknown signal");
                write!(f, "was killed by {name} (signal {signal}")?;
                if *signal == libc::SIGKILL {
                    write!(f, "; also how the kernel's OOM killer ends a process")?;
                }
                write!(f, ")")?;
                if *core_dumped {
                    write!(f, " and dumped core")?;
                }
                Ok(())
            }
        }
    }
}

/// The result type of the pool's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
