//! The demos: every way of sharing one big array between processes that
//! the source notes compare, each a module with its options (`Args`) and
//! its `run`. The `demos` binary is a command line over them; the book
//! includes their code.
//!
//! Each demo runs at a default size that finishes in seconds on two cores
//! and scales with flags up to the notes' 10 000 x 320 000 doubles
//! (25.6 GB). Each one prints the time of its phases, the bytes moved or
//! serialised, and a per-process memory table (pid, role, RSS, PSS, shared,
//! private) taken while the workers hold the array; each verifies its own
//! result and returns an error saying what was wrong if it does not hold.

pub mod common;
pub mod copy;
pub mod fifo;
pub mod fork_cow;
pub mod locked;
pub mod memmap;
pub mod memory_limit;
pub mod mmap;
pub mod passes;
pub mod philox;
pub mod pid_fill;
pub mod random_fill;
pub mod raw_array;

/// The workspace README's example, compiled and run as a doctest so it
/// cannot drift (the published crates test their own READMEs).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
