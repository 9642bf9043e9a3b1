//! Shared arrays for forked processes: many processes read and write one
//! array, without a copy.
//!
//! The Rust counterparts of Python's shared-memory tools:
//!
//! | Python | here |
//! |---|---|
//! | `multiprocessing.sharedctypes.RawArray`, `Array(lock=False)` + `np.frombuffer` | [`SharedArray`]: lock-free, atomic element access |
//! | the same, each worker filling its own rows | `SharedArray<T, `[`Partitioned`]`>`: rows claimed as `&mut [T]`/`ArrayViewMut` inside a closure, checked across processes |
//! | `multiprocessing.Array(lock=True)`, `with arr.get_lock():` | `SharedArray<T, `[`Locked`]`>`: behind a robust process-shared lock, `with_lock(\|data\| ...)` |
//! | `multiprocessing.Value(lock=False)` / `Value(lock=True)` | a zero-dimensional array: `SharedArray::<T>::full(&[], v)` / `SharedArray::<T, Locked>::full(&[], v)` |
//! | `np.memmap`, `np.load(path, mmap_mode='r+')`, `mmap_mode='r'`, `np.save` | [`ArrayOptions`]: `create_file`/`open_file`, `create_npy`/`open_npy`, `read_only`, `overwrite`; [`SharedArray::save_npy`] |
//! | `ps`, `pmap`, `smem` | [`MemoryReport`]: RSS, PSS, shared and private memory per process |
//! | `MemoryError` | [`ShmError::OutOfMemory`], before any allocation |
//!
//! # How it works
//!
//! An anonymous array is a `memfd` mapped `MAP_SHARED` (never `memmap2`'s
//! `map_anon`, which is private after `fork`), with one header page in front
//! of the page-aligned data. Its memory is allocated when it is created, after
//! checking that the machine can give it: populated in bulk
//! (`MADV_POPULATE_WRITE`) over disjoint ranges by one thread per core. Every process
//! forked afterwards shares it; it is freed when the last process that maps
//! it drops it or dies, and nothing is left in `/dev/shm`. File-backed arrays
//! map the file itself, so an array can be larger than RAM.
//!
//! Handles are cheap to clone and `Send + Sync`: a worker reaches the array
//! through a `static OnceLock` set by an initializer, or through a global set
//! before the pool forks.
//!
//! # Soundness across processes
//!
//! Memory another process writes concurrently never sits behind a `&[T]` or
//! `&mut [T]` that claims to be unaliased. Without coordination, elements are
//! accessed with atomics ([`SharedArray::get`], [`SharedArray::fill_rows`],
//! [`SharedArray::write_row`]...), which run at memory bandwidth for bulk
//! fills on this machine. Ordinary slices and `ndarray` views are handed out
//! only where something makes them true: the lock of a [`Locked`] array, a
//! claim of rows of a [`Partitioned`] array, or an `unsafe` method whose
//! contract the caller keeps ([`SharedArray::rows_mut_unchecked`]).
//!
//! Exclusive access is scoped: a lock or a claim of rows is held only while
//! a closure runs ([`SharedArray::with_lock`],
//! [`SharedArray::with_rows_mut`]), and the slices and views it gets
//! cannot outlive the call. So no `&mut` into shared memory can be `'static`:
//! none can be stored in a `static` or moved into a pool's `initializer` and
//! copied into every worker by the pool's (safe) fork. A lock or claim held
//! by a process is its own: a child forked meanwhile does not release it.
//!
//! # Page faults
//!
//! Forking with a large shared array copies no page tables, so each process
//! takes a minor fault per 4 KiB page it touches for the first time.
//! Measured here (`benches/fill.rs`, 256 MiB of `f64`, 2 cores): `memset` of
//! already-mapped memory runs at 21 GiB/s (and the safe atomic
//! [`SharedArray::fill_rows`] just as fast); a freshly forked worker filling
//! its rows reaches 2.5 GiB/s faulting page by page and 3.7 GiB/s when it
//! calls [`SharedArray::prefault`] (or [`Rows::prefault`]) first; two
//! workers reach 4.4 and 6.7 GiB/s together. Creating an array allocates,
//! zeroes and maps its pages in bulk, on one thread per core, so the
//! creating process's first fill takes no fault; processes forked later
//! still map the pages they touch (`benches/create.rs`).
//!
//! # Examples
//!
//! A child's writes are seen by the parent:
//!
//! ```
//! use forkpool_shm::SharedArray;
//! use nix::sys::wait::waitpid;
//! use nix::unistd::{fork, ForkResult};
//!
//! let array = SharedArray::<f64>::new(&[1000, 1000])?;
//! // SAFETY: the child only touches the array and then `_exit`s.
//! match unsafe { fork() }? {
//!     ForkResult::Child => {
//!         array.fill_row(999, 42.0);
//!         // SAFETY: ends the child without running the parent's exit handlers.
//!         unsafe { libc::_exit(0) };
//!     }
//!     ForkResult::Parent { child } => {
//!         waitpid(child, None)?;
//!     }
//! }
//! assert_eq!(array.get_at(&[999, 0]), 42.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Asking for more memory than the machine has fails at once, with the
//! alternative:
//!
//! ```
//! use forkpool_shm::{SharedArray, ShmError};
//!
//! let err = SharedArray::<f64>::new(&[10_000_000, 160_000]).unwrap_err(); // 11.6 TiB
//! assert!(matches!(err, ShmError::OutOfMemory { .. }));
//! println!("{err}"); // asked for 11.6 TiB of shared memory but only ... use a file-backed array ...
//! ```

#[cfg(not(target_os = "linux"))]
compile_error!(
    "forkpool-shm runs on Linux only: its arrays are memfd_create memory populated with \
     MADV_POPULATE_WRITE (or reserved with fallocate), and its memory reports read \
     Linux's /proc, which macOS, the BSDs and Windows do not have"
);

mod array;
mod dtype;
mod element;
mod error;
mod file;
mod header;
mod locked;
mod memfd;
mod memory;
mod mode;
mod mutex;
mod npy;
mod partition;
mod prefault;
mod process;
mod region;
mod report;
mod rows;
mod shape;
mod units;
mod view;

pub use array::SharedArray;
pub use element::Element;
pub use error::{LockError, LockResult, OwnerDied, ShmError};
pub use file::ArrayOptions;
pub use memory::{Available, MemInfo, available_memory};
pub use mode::{Atomic, Locked, Mode, Partitioned};
pub use partition::split_rows;
pub use report::{MemoryReport, MemoryUsage};
pub use rows::Rows;
pub use units::ByteSize;

/// This crate's README (shipped in the package), its example compiled and
/// run as a doctest so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// A process id, as `fork` and `waitpid` use it (re-exported from `nix`).
pub use nix::unistd::Pid;
