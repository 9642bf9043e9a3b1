//! Errors: one enum for everything that can go wrong, and the lock's
//! poisoning report that hands the closure's result back.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::units::ByteSize;

/// Everything that can go wrong in this crate.
///
/// Each message says what was asked, what was found, and what to do about it.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{SharedArray, ShmError};
///
/// // 10 TiB of RAM is more than this machine has: the request fails at once.
/// let err = SharedArray::<u8>::new(&[10 << 40]).unwrap_err();
/// assert!(matches!(err, ShmError::OutOfMemory { .. }));
/// assert!(err.to_string().contains("10.0 TiB"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// An anonymous shared array larger than the memory this machine can give.
    #[error(
        "asked for {requested} of shared memory but only {available} is available ({limit}); \
         anonymous shared memory lives in RAM (and swap, if any), so this would fail or be \
         killed part way through; use a file-backed array instead, which the kernel pages to \
         disk: `ArrayOptions::new().create_file(path, shape)` (or `create_npy`; both \
         `unsafe fn`s, as memory-mapping a file is)"
    )]
    OutOfMemory {
        /// The size asked for.
        requested: ByteSize,
        /// The memory available for it.
        available: ByteSize,
        /// What bounds `available`: `MemAvailable` (plus free swap) or a cgroup limit.
        limit: String,
    },

    /// The kernel refused to reserve the memory or disk space up front.
    #[error(
        "could not reserve {size} for {what}: {cause}; there is not enough free memory or \
         disk space for it (use a smaller array, free memory, or a file on a larger disk)"
    )]
    Reserve {
        /// The size asked for.
        size: ByteSize,
        /// What was being reserved (`"an anonymous shared array"`, a path).
        what: String,
        /// The error from `fallocate` or `madvise(MADV_POPULATE_WRITE)`
        /// (part of the message, so not also a `source()`: printed once by
        /// error chains).
        cause: Errno,
    },

    /// A shape that no array can have.
    #[error("invalid shape {shape:?}: {reason}")]
    InvalidShape {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Why it is invalid.
        reason: String,
    },

    /// A system call failed.
    #[error("{call} failed: {cause}")]
    Os {
        /// The call and what it was doing (`"memfd_create"`).
        call: &'static str,
        /// The error number (in the message).
        cause: Errno,
    },

    /// Reading, writing or mapping a file failed: the OS said no. The
    /// message says what was being done and the kind of failure; the OS's
    /// own error is the [`source`](std::error::Error::source).
    #[error("{path}: could not {op}: {}", io_advice(source.kind()))]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`"open the file for reading"`).
        op: &'static str,
        /// The OS's error.
        source: io::Error,
    },

    /// A file call refused to act though the OS would have let it: what is
    /// at the path is not what the call needs (something already exists
    /// where a file is to be created, a symbolic link, not a regular file,
    /// a read-only file to be mapped for writing), or the options do not
    /// fit it. Nothing was changed.
    #[error("{path}: could not {op}: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// What was asked (`"create the file"`).
        op: &'static str,
        /// The refusal's kind: `AlreadyExists` (something is at a path to
        /// create), `InvalidInput` (not a regular file, options that do not
        /// fit), `PermissionDenied` (a read-only file opened for writing).
        kind: io::ErrorKind,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A file holds elements of another type than the array was opened with.
    #[error(
        "{path}: element type mismatch: the file holds {found} but it was opened as {expected}{hint}"
    )]
    DtypeMismatch {
        /// The file.
        path: PathBuf,
        /// The element type asked for (`"f64 (<f8)"`).
        expected: String,
        /// What the file holds (its numpy descriptor, e.g. `'<i4'`).
        found: String,
        /// How to open it instead, if there is a matching type.
        hint: String,
    },

    /// An array has another shape than expected.
    #[error("{what}: shape mismatch: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The array (a path, or `"anonymous array"`).
        what: String,
        /// The shape asked for.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },

    /// A file's length does not match the shape it is opened with.
    #[error(
        "{path}: the file is {actual} bytes but shape {shape:?} of {elem} needs {expected} \
         bytes{detail}"
    )]
    FileLength {
        /// The file.
        path: PathBuf,
        /// The shape asked for (or read from the header).
        shape: Vec<usize>,
        /// The element type.
        elem: &'static str,
        /// The length the shape needs, including any header.
        expected: u64,
        /// The file's actual length.
        actual: u64,
        /// More about what is wrong (too short, trailing bytes).
        detail: String,
    },

    /// A write to an array mapped read-only (opened with
    /// `ArrayOptions::read_only(true)`).
    #[error(
        "{path}: the array is mapped read-only; open it without ArrayOptions::read_only to \
         write it"
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },

    /// A `.npy` file whose header cannot be used.
    #[error("{path}: not a usable .npy file: {reason}")]
    NpyHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with the header.
        reason: String,
    },

    /// A process died (or panicked) while holding a lock. Converted from a
    /// [`LockError::OwnerDied`] by `?`, dropping the closure's result.
    #[error(
        "a process ({}) died while holding the lock; the data it protects may be half-updated \
         (check it, then call `clear_poison`)",
        who(*pid)
    )]
    OwnerDied {
        /// The pid of the process that held the lock, if known.
        pid: Option<Pid>,
    },

    /// The lock can no longer be used: a holder died, and the process that
    /// learned of it released the lock without marking it consistent.
    #[error(
        "the lock is not recoverable (ENOTRECOVERABLE): a holder died and the state was not \
         repaired; create a new array"
    )]
    LockNotRecoverable,

    /// `with_lock` called by the thread that already holds the lock: it would
    /// wait for itself forever.
    #[error("this thread already holds the lock; locking it again would deadlock")]
    WouldDeadlock,

    /// `try_with_lock` found the lock held by someone else.
    #[error("the lock is held by another thread or process")]
    WouldBlock,

    /// `with_lock_timeout` gave up.
    #[error("timed out after {0:?} waiting for the lock")]
    LockTimeout(Duration),

    /// Rows asked for with `with_rows_mut`/`with_rows` overlap rows another
    /// claim holds.
    #[error(
        "rows {requested:?} overlap rows {held:?}, claimed by pid {pid}; hand each task a \
         disjoint range of rows"
    )]
    RowsBusy {
        /// The rows asked for.
        requested: Range<usize>,
        /// The overlapping rows already claimed.
        held: Range<usize>,
        /// The process that claimed them.
        pid: Pid,
    },

    /// Too many row claims are held at once.
    #[error(
        "too many row claims held at once (at most {max} per array); drop finished claims first"
    )]
    TooManyClaims {
        /// The most claims an array holds at once.
        max: usize,
    },

    /// A range of rows that does not fit the array.
    #[error("rows {rows:?} are out of bounds for an array of {nrows} rows")]
    RowsOutOfBounds {
        /// The rows asked for.
        rows: Range<usize>,
        /// The number of rows.
        nrows: usize,
    },

    /// Reading a process's memory figures from `/proc` failed (the OS's
    /// error is the [`source`](std::error::Error::source)).
    #[error("could not read memory figures of pid {pid} ({path}): {}", proc_advice(source.kind()))]
    Proc {
        /// The process.
        pid: Pid,
        /// The file read.
        path: PathBuf,
        /// The OS's error: `NotFound` when the process has exited.
        source: io::Error,
    },

    /// A `/proc` file whose contents were not understood.
    #[error("could not understand {path}: {reason}")]
    ProcFormat {
        /// The file read.
        path: PathBuf,
        /// What was not understood.
        reason: String,
    },
}

/// A lock holder's pid in words.
fn who(pid: Option<Pid>) -> String {
    pid.map_or("pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// What an I/O error's kind means for a file, and what to do.
fn io_advice(kind: io::ErrorKind) -> String {
    match kind {
        io::ErrorKind::NotFound => "it does not exist (check the path)".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (check the permissions of the file and its directory; to only \
             read a file, use ArrayOptions::new().read_only(true))"
                .into()
        }
        other => format!("{other}"),
    }
}

/// What an I/O error's kind means for a `/proc` file of a process.
fn proc_advice(kind: io::ErrorKind) -> String {
    match kind {
        io::ErrorKind::NotFound => "the process has exited (or never existed)".into(),
        io::ErrorKind::PermissionDenied => {
            "it is another user's process (run as that user, or as root)".into()
        }
        other => format!("{other}"),
    }
}

/// The error [`ShmError::Io`] for an I/O error `source` while doing `op` on
/// `path` (`.map_err(io_error(path, "open the file"))`).
pub(crate) fn io_error(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> ShmError {
    let path = path.to_owned();
    move |source| ShmError::Io { path, op, source }
}

/// The result of [`SharedArray::with_lock`](crate::SharedArray::with_lock)
/// and its kin: the closure's result, or why the lock did not simply run it.
pub type LockResult<R> = Result<R, LockError<R>>;

/// Why `with_lock` did not simply return the closure's result.
///
/// Like [`std::sync::TryLockError`]: either the lock was taken but is
/// poisoned (a holder died or panicked; the closure ran and its result is
/// inside), or it could not be taken (the closure did not run).
///
/// `?` converts it into a [`ShmError`], a `Box<dyn Error>` or a
/// `Box<dyn Error + Send + Sync>`, dropping the result.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{LockError, Locked, SharedArray};
///
/// let counter = SharedArray::<u64, Locked>::full(&[], 0)?; // a value: 0-d
/// let count = match counter.with_lock(|count| {
///     count[0] += 1;
///     count[0]
/// }) {
///     Ok(count) => count,
///     // A process died holding the lock: the data may be half-updated.
///     Err(LockError::OwnerDied(died)) => died.into_inner(),
///     Err(LockError::Failed(err)) => return Err(err.into()),
/// };
/// assert_eq!(count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub enum LockError<G> {
    /// The lock was acquired, but its previous holder died or panicked while
    /// holding it. The closure ran; its result is inside.
    OwnerDied(OwnerDied<G>),
    /// The lock was not acquired.
    Failed(ShmError),
}

/// The report that a lock's holder died or panicked while holding it, with
/// the result of the closure that ran after it (like
/// [`std::sync::PoisonError`]).
///
/// The lock stays poisoned, and every `with_lock` reports this, until
/// `clear_poison` is called on the array or value.
pub struct OwnerDied<G> {
    result: G,
    pid: Option<Pid>,
    panicked: bool,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(result: G, pid: Option<Pid>, panicked: bool) -> Self {
        OwnerDied {
            result,
            pid,
            panicked,
        }
    }

    /// The pid of the process that held the lock when it died or panicked,
    /// if known.
    ///
    /// # Examples
    ///
    /// See [`SharedArray::with_lock`](crate::SharedArray::with_lock).
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// Whether the holder panicked (and went on running) rather than died.
    ///
    /// # Examples
    ///
    /// See [`SharedArray::with_lock`](crate::SharedArray::with_lock).
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    /// The closure's result.
    ///
    /// # Examples
    ///
    /// See [`LockError`].
    pub fn into_inner(self) -> G {
        self.result
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied")
            .field("pid", &self.pid)
            .field("panicked", &self.panicked)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.panicked { "panicked" } else { "died" };
        write!(
            f,
            "the previous holder of the lock ({}) {how} while holding it; the data may be \
             half-updated (check it, then call `clear_poison`)",
            who(self.pid)
        )
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(died) => f.debug_tuple("OwnerDied").field(died).finish(),
            LockError::Failed(err) => f.debug_tuple("Failed").field(err).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(died) => died.fmt(f),
            LockError::Failed(err) => err.fmt(f),
        }
    }
}

impl<G> From<LockError<G>> for Box<dyn std::error::Error> {
    /// Drops the result (via [`ShmError`]), so `with_lock(..)?` works in
    /// functions returning `Box<dyn Error>`.
    fn from(err: LockError<G>) -> Self {
        Box::new(ShmError::from(err))
    }
}

impl<G> From<LockError<G>> for Box<dyn std::error::Error + Send + Sync> {
    /// Drops the result (via [`ShmError`]), so `with_lock(..)?` works in
    /// functions returning `Box<dyn Error + Send + Sync>`.
    fn from(err: LockError<G>) -> Self {
        Box::new(ShmError::from(err))
    }
}

impl<G> From<LockError<G>> for ShmError {
    fn from(err: LockError<G>) -> Self {
        match err {
            LockError::OwnerDied(died) => ShmError::OwnerDied { pid: died.pid },
            LockError::Failed(err) => err,
        }
    }
}

impl<G> From<ShmError> for LockError<G> {
    fn from(err: ShmError) -> Self {
        LockError::Failed(err)
    }
}
