//! What the workers did: [`Pool::stats`](crate::Pool::stats).
//!
//! The parent counts, per worker, the tasks and items whose results came
//! back and the busy time the worker reported with each result (the time
//! its trampolines ran, from the frame's header). Peak memory is the
//! kernel's: `VmHWM` in `/proc/<pid>/status` for a live worker, and for one
//! that exited, `ru_maxrss` from the `wait4` its zygote reaped it with
//! (reported with the exit, so a worker killed by the OOM killer says how
//! much it held).

use std::collections::VecDeque;
use std::time::Duration;

use nix::unistd::Pid;

/// How many exited workers [`PoolStats::exited`] remembers (the most
/// recent ones).
pub(crate) const EXITED_KEPT: usize = 1024;

/// Running counts for one worker, kept by the scheduler.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) tasks: u64,
    pub(crate) items: u64,
    pub(crate) busy_ns: u64,
}

impl Counters {
    /// One task's result came back: `items` items, `busy_ns` of work.
    pub(crate) fn record(&mut self, items: usize, busy_ns: u64) {
        self.tasks += 1;
        self.items += items as u64;
        self.busy_ns = self.busy_ns.saturating_add(busy_ns);
    }

    pub(crate) fn stats(&self, pid: Pid, peak_rss: u64, alive: bool) -> WorkerStats {
        WorkerStats {
            pid,
            tasks: self.tasks,
            items: self.items,
            busy: Duration::from_nanos(self.busy_ns),
            peak_rss,
            alive,
        }
    }
}

/// Exited workers, most recent last, at most [`EXITED_KEPT`].
#[derive(Debug, Default)]
pub(crate) struct Exited(VecDeque<WorkerStats>);

impl Exited {
    pub(crate) fn push(&mut self, s: WorkerStats) {
        if self.0.len() == EXITED_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(s);
    }

    pub(crate) fn to_vec(&self) -> Vec<WorkerStats> {
        self.0.iter().copied().collect()
    }
}

/// What one worker process did, from [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's pid.
    pub pid: Pid,
    /// Tasks whose results came back from it (a task is one chunk of a
    /// map, one `apply`).
    pub tasks: u64,
    /// Items in those tasks.
    pub items: u64,
    /// Time it spent running those tasks (decoding, the function, encoding),
    /// as it measured.
    pub busy: Duration,
    /// The most memory it held resident at once (peak RSS), in bytes: the
    /// kernel's `VmHWM` for a live worker, `wait4`'s `ru_maxrss` for one
    /// that exited; 0 if it could not be read. Pages it shares with other
    /// processes (the program inherited at fork, shared arrays it touched)
    /// count in full, as in `ps`.
    pub peak_rss: u64,
    /// Whether it is one of the pool's workers now (`false`: it exited,
    /// was killed or was recycled).
    pub alive: bool,
}

/// The pool's workers and what each did: [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The workers alive now, in the pool's order.
    pub workers: Vec<WorkerStats>,
    /// Workers that exited (crashed, killed, recycled by
    /// `max_tasks_per_child`), most recent last; the last 1024 are kept.
    pub exited: Vec<WorkerStats>,
}

impl PoolStats {
    /// Tasks done by every worker, alive or exited (among those kept).
    pub fn tasks(&self) -> u64 {
        self.all().map(|w| w.tasks).sum()
    }

    /// Items done by every worker, alive or exited (among those kept).
    pub fn items(&self) -> u64 {
        self.all().map(|w| w.items).sum()
    }

    /// The largest peak RSS of any worker, alive or exited (among those
    /// kept).
    pub fn peak_rss(&self) -> u64 {
        self.all().map(|w| w.peak_rss).max().unwrap_or(0)
    }

    fn all(&self) -> impl Iterator<Item = &WorkerStats> {
        self.workers.iter().chain(&self.exited)
    }
}

/// A live process's peak RSS in bytes (`VmHWM`), or 0 if unreadable.
pub(crate) fn live_peak_rss(pid: Pid) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
