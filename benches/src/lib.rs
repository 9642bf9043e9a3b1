//! Benchmarks that span the forkpool crates, each measured beside the
//! machine's limit for the same work, and the comparison with Python's
//! `multiprocessing` (the `compare` binary).
//!
//! This library holds the workloads, so the criterion benchmarks
//! (`benches/*.rs`) and the comparison runner (`src/bin/compare.rs`) run the
//! same code:
//!
//! - [`tasks`]: `map` at several chunk sizes, `apply` round trips, payloads,
//!   and the `rayon` ceiling for task throughput;
//! - [`arrays`]: shared-array fills, a large array passed by value or
//!   shared, locked and lock-free counters;
//! - [`random`]: random fill, serial and parallel;
//! - [`sched`]: scheduling, spin-on-clock task lists on a fresh pool and
//!   after other work, against a raw-fork ceiling (issue 9);
//! - [`startup`]: pool start-up as the parent's memory grows;
//! - [`ceiling`]: `memset`, `memcpy`, raw pipe ping-pong and throughput,
//!   bare `fork`;
//! - [`timing`]: medians, and pinning to one CPU;
//! - [`experiments`]: prototypes of what would close the gaps (not API).
//!
//! Run `cargo bench -p forkpool-benches` for the criterion benchmarks, and
//! `cargo run --release -p forkpool-benches --bin compare` for the table
//! against Python (see `benches/README.md`).

pub mod arrays;
pub mod ceiling;
pub mod experiments;
pub mod random;
pub mod sched;
pub mod startup;
pub mod tasks;
pub mod timing;
