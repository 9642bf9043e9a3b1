//! Forked workers for benchmarks: fork, run, `_exit`, wait for exactly these pids.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// Forks one child per item, runs `work(item)` in each, waits for all of
/// them, and returns the wall time from the first fork to the last exit.
pub fn forked<I: Copy>(items: &[I], work: impl Fn(I)) -> Duration {
    let start = Instant::now();
    let mut pids = Vec::with_capacity(items.len());
    for &item in items {
        // SAFETY: the benchmark process is single-threaded here; the child
        // runs `work` and `_exit`s without returning into criterion.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                work(item);
                // SAFETY: ends the child without running exit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    for pid in pids {
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
    }
    start.elapsed()
}
