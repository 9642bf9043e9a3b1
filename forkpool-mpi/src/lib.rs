//! forkpool's map across machines, on MPI.
//!
//! When an array outgrows one machine, the pool runs on MPI: every rank
//! runs the same program; rank 0 gets the `Pool` and the other ranks
//! serve its tasks inside `Pool::world`, the way the workers of
//! `forkpool::Pool` serve theirs, and the way `mpi4py.futures`'
//! `MPIPoolExecutor` works for Python.
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # #[cfg(not(feature = "mpi"))]
//! # fn main() {}
//! # #[cfg(feature = "mpi")]
//! fn main() -> Result<(), forkpool_mpi::Error> {
//!     // every rank runs main; rank 0 gets the pool, the other ranks serve
//!     // tasks inside world() and get None when rank 0 drops its pool
//!     let Some(pool) = forkpool_mpi::Pool::world()? else { return Ok(()) };
//!     let squares = pool.map(square, 0..1_000_000u64)?;
//!     assert_eq!(squares[1000], 1_000_000);
//!     for r in pool.imap_unordered(square, 0..10u64, 1) {
//!         println!("{}", r?);
//!     }
//!     let x = pool.apply(square, 12)?;
//!     println!("{x}; {} worker ranks", pool.ranks());
//!     Ok(())
//! }
//! ```
//!
//! Launch with `mpirun -n 4 target/release/examples/...` (or `srun`).
//!
//! - **Functions** cross ranks as they cross the fork, by address, made
//!   position independent: as an offset from a fixed function of the
//!   executable ([`FnOffset`]). Every rank checks that all run the same
//!   executable ([`ImageId`], a hash of `/proc/self/exe`) and refuses to
//!   start otherwise ([`Error::NotSameBinary`]).
//! - **Arguments and results** are serialised (serde + postcard), as in
//!   `forkpool`.
//! - **Node-shared arrays** (`NodeArray`): one copy per node in an MPI-3
//!   shared window, rows split over the nodes.
//!
//! # Faults
//!
//! By default `mpirun` ends the whole job when a rank dies (signal or exit
//! without `MPI_Finalize`): rank 0 is killed too, and `mpirun` exits
//! non-zero naming the rank and the signal. Nothing waits forever. Run
//! with `mpirun --enable-recovery` and the job goes on: rank 0 sees (by
//! pid, for ranks on its own node) that the rank died, fails the items it
//! held with [`Error::RankDied`], and runs the rest on the ranks left; a
//! worker on rank 0's node whose rank 0 died returns an error from
//! `Pool::world`. Ranks on other nodes cannot be watched by pid: there
//! only `mpirun`'s default (end the job) applies. Nor can a rank that dies
//! inside a collective call (the start-up exchange in `Pool::world`, the
//! allocation of a `NodeArray`): MPI collectives have no deadline without
//! ULFM (which Debian's OpenMPI 4.1 lacks), so under `--enable-recovery`
//! the other ranks of that call wait; keep `mpirun`'s default where that
//! matters. Under `--enable-recovery` `mpirun` exits 0 even though a rank
//! died: check the pool's errors, not only the exit status.
//!
//! # Testing several nodes on one machine
//!
//! With `FORKPOOL_MPI_TEST_NODES=k` in every rank's environment (`mpirun -x
//! FORKPOOL_MPI_TEST_NODES=2 ...`), the ranks of each node are split into
//! `k` pretend nodes by rank, each with its own shared window: the rows
//! are split over them and tasks routed to them as over real nodes (the
//! crate's tests and CI run the examples so).
//!
//! # Cargo feature
//!
//! The pool and the arrays need an MPI library (OpenMPI or MPICH, with
//! `mpicc`) and libclang to build: they are behind the feature `mpi`, off
//! by default, so that the workspace builds and tests without MPI. The
//! parts that need no MPI (function offsets, image ids, the task encoding,
//! the row split) build and are tested either way.

// Without the `mpi` feature the MPI-free parts are built and unit-tested,
// but only the pool uses some of them.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

mod error;
mod image;
mod layout;
mod task;

#[cfg(feature = "mpi")]
mod array;
#[cfg(feature = "mpi")]
mod pool;
#[cfg(feature = "mpi")]
mod serve;

#[cfg(feature = "mpi")]
pub use array::{NodeArray, NodeElement};
pub use error::{Error, Result};
pub use image::{FnOffset, ImageId};
pub use layout::RankInfo;
#[cfg(feature = "mpi")]
pub use pool::{IMap, Pool};
