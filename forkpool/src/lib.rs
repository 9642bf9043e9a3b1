//! A fork-based process pool for Rust, in the spirit of Python's
//! `multiprocessing.Pool`: `map`, `imap`, `imap_unordered`, `starmap`,
//! `apply`, `apply_async`, `map_async`, an initializer, `max_tasks_per_child`,
//! and no hang, ever, when a worker crashes. Beyond Python's `Pool`: a
//! context made at any time ([`Pool::map_with`], [`Context`]), borrowed
//! input (`pool.map(f, &items)`), `.await` on any [`AsyncResult`] (and
//! [`IMap`] as a `Stream`, feature `futures`), cancelling
//! ([`AsyncResult::cancel`]), progress bars (feature `progress`) and
//! per-worker statistics ([`Pool::stats`]).
//!
//! ```
//! # fn main() -> Result<(), forkpool::Error> {
//! fn collatz_len(mut n: u64) -> u32 {
//!     let mut steps = 0;
//!     while n != 1 {
//!         n = if n.is_multiple_of(2) { n / 2 } else { 3 * n + 1 };
//!         steps += 1;
//!     }
//!     steps
//! }
//!
//! let pool = forkpool::Pool::new(2)?;
//! let lens = pool.map(collatz_len, 1..=10_000)?;
//! assert_eq!(lens[26], 111); // 27 takes 111 steps
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! - **Functions cross the fork as pointers.** A worker is a fork of the
//!   same program, so `map(f, items)` sends `f`'s address and that of a
//!   trampoline monomorphised for its types; only arguments and results are
//!   serialised (serde, in a binary format of the pool's own that moves
//!   arrays of plain numbers as whole blocks of bytes).
//! - **Workers are forked by a zygote.** The pool forks one single-threaded
//!   process when it starts, and that process forks every worker, so no
//!   worker is ever forked from the parent's threads (whose locks would be
//!   frozen in the child). The zygote reaps the workers and reports how each
//!   one ended.
//! - **One task pipe and one result pipe per worker**, carrying
//!   length-prefixed frames; a parent-side collector thread routes results
//!   and schedules tasks.
//! - **No hang.** A panic is the item's error; a dead worker fails the
//!   tasks it held (naming its pid and signal) and is replaced; the parent
//!   dying closes every pipe, and workers and zygote exit on EOF.
//!
//! The guide (`book/`) covers the design, fork safety and the ways of
//! sharing a large array between workers (see the `forkpool-shm` crate).
//!
//! # Fork safety, in short
//!
//! Workers inherit the parent's memory *as of [`PoolBuilder::build`]*. Build
//! pools early, ideally before starting threads: a lock some other thread
//! held at that moment (say, stdout's while it printed) stays locked in the
//! workers. The pool's own code takes no such lock after the fork.

#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "forkpool runs on Linux only: it forks its workers and uses Linux's eventfd, \
     prctl(PR_SET_PDEATHSIG), memfd_create and F_SETPIPE_SZ, which macOS, the BSDs \
     and Windows do not have"
);

mod arg;
mod async_result;
mod buffer;
mod builder;
mod codec;
mod collector;
mod context;
mod control;
mod error;
mod fds;
mod frame;
mod imap;
mod mailbox;
mod pool;
#[cfg(feature = "progress")]
mod progress;
mod scheduler;
mod side;
mod starmap;
mod stats;
mod task;
mod worker;
mod zygote;

pub use arg::Arg;
pub use async_result::AsyncResult;
pub use buffer::{Buffer, BufferMut, Plain};
pub use builder::PoolBuilder;
pub use context::{Context, IMapWith, WithContext};
pub use error::{Error, ExitCause, Result};
pub use imap::IMap;
pub use pool::Pool;
#[cfg(feature = "progress")]
pub use progress::{Progressed, WithProgress};
pub use starmap::StarFn;
pub use stats::{PoolStats, WorkerStats};

/// A process id: what [`Pool::worker_pids`], [`Pool::zygote_pid`],
/// [`WorkerStats::pid`] and the pid of every [`Error`] are (`nix`'s type,
/// re-exported; `forkpool_shm::Pid` is the same type).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use forkpool::{Pid, Pool};
/// let pool = Pool::new(2)?;
/// let pids: Vec<Pid> = pool.worker_pids();
/// assert!(!pids.contains(&Pid::this()));
/// let from_worker: u32 = pool.apply(|()| std::process::id(), ())?;
/// assert!(pids.iter().any(|p| p.as_raw() as u32 == from_worker));
/// # Ok(()) }
/// ```
pub use nix::unistd::Pid;

/// This crate's README (shipped in the package), its example compiled and
/// run as a doctest so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
