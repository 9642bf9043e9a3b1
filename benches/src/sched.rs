//! Scheduling: does every core stay busy while work waits, whatever ran
//! before? (Issue 9.)
//!
//! Tasks spin on the clock for given durations, so the same lists are
//! language-neutral: Python's `Pool` runs them too
//! (`python/sched.py`, which reads the list from a file). Each workload
//! runs on a fresh pool, after a job of tiny tasks, and after an
//! `imap_unordered` of ~1 ms tasks, as `map` with default chunks and as
//! `imap_unordered` with chunksize 1. The measure is
//!
//! ```text
//! efficiency = max(sum of durations / processes, longest task) / wall time
//! ```
//!
//! and the ceiling is the same list split statically (round robin) over
//! plainly forked processes, measured in the same run. On a machine whose
//! cores other processes keep busy, the same lists can run as sleeps
//! ([`Kind::Sleep`]): that measures the schedule alone.

use std::time::{Duration, Instant};

use crate::ceiling::{exit_child, wait_exited_ok};
use forkpool::Pool;
use nix::unistd::{ForkResult, fork};

/// Spins on the clock for `us` microseconds (CPU-bound, no allocation, no
/// lock: also safe in a plainly forked child).
pub fn spin_us(us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    us
}

/// Sleeps `us` microseconds: the same lists without the CPU, for a machine
/// whose cores other processes keep busy (a spinning task there waits for
/// its share of a core, and the measure becomes that share, not the
/// schedule). Measures the schedule only: which worker got what, when.
pub fn sleep_us(us: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(us));
    us
}

/// How a task spends its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Spinning on the clock (CPU-bound).
    Spin,
    /// Sleeping.
    Sleep,
}

impl Kind {
    /// The task function.
    pub fn task(self) -> fn(u64) -> u64 {
        match self {
            Kind::Spin => spin_us,
            Kind::Sleep => sleep_us,
        }
    }

    /// In words.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Spin => "spin",
            Kind::Sleep => "sleep",
        }
    }
}

/// The tiny task of the "after tiny tasks" precondition.
pub fn tiny(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// A workload: a name and the task durations in microseconds.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short id for tables and `--only`.
    pub id: &'static str,
    /// What it is, in words.
    pub what: &'static str,
    /// Task durations, µs, in submission order.
    pub durations: Vec<u64>,
}

/// A small deterministic generator (64-bit LCG, Knuth's MMIX constants),
/// so the lists are the same on every run and machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The three workloads of issue 9, at `scale` (1.0: full size).
pub fn workloads(scale: f64) -> Vec<Workload> {
    let n = |x: usize| ((x as f64 * scale) as usize).max(1);
    let mut rng = Lcg(9);
    let long_tail = (0..n(1000))
        .map(|i| {
            if i % 50 == 49 {
                rng.range(20_000, 60_000)
            } else {
                rng.range(100, 1_000)
            }
        })
        .collect();
    let mut tiny_then_long = vec![20; n(3000)];
    tiny_then_long.extend(std::iter::repeat_n(25_000, n(40)));
    vec![
        Workload {
            id: "uniform",
            what: "uniform 0.5 ms x 2000",
            durations: vec![500; n(2000)],
        },
        Workload {
            id: "long-tail",
            what: "long tail: 0.1-1 ms, every 50th 20-60 ms (x 1000)",
            durations: long_tail,
        },
        Workload {
            id: "tiny-then-long",
            what: "3000 x 20 µs then 40 x 25 ms",
            durations: tiny_then_long,
        },
    ]
}

impl Workload {
    /// The best any schedule can do on `processes` processes.
    pub fn ideal(&self, processes: usize) -> Duration {
        let sum: u64 = self.durations.iter().sum();
        let longest = self.durations.iter().copied().max().unwrap_or(0);
        Duration::from_micros((sum / processes as u64).max(longest))
    }

    /// `ideal / wall`.
    pub fn efficiency(&self, processes: usize, wall: Duration) -> f64 {
        self.ideal(processes).as_secs_f64() / wall.as_secs_f64()
    }
}

/// What ran on the pool before the timed job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    /// A fresh pool.
    Fresh,
    /// `imap_unordered` of 20 000 tiny tasks, chunksize 1.
    Tiny,
    /// `imap_unordered` of 200 tasks of 1 ms, chunksize 1.
    Imap1ms,
}

impl Before {
    /// All three, in table order.
    pub const ALL: [Before; 3] = [Before::Fresh, Before::Tiny, Before::Imap1ms];

    /// The name `python/sched.py` takes.
    pub fn arg(self) -> &'static str {
        match self {
            Before::Fresh => "fresh",
            Before::Tiny => "tiny",
            Before::Imap1ms => "imap1ms",
        }
    }

    /// In words.
    pub fn what(self) -> &'static str {
        match self {
            Before::Fresh => "fresh pool",
            Before::Tiny => "after tiny tasks",
            Before::Imap1ms => "after imap_unordered of 1 ms tasks",
        }
    }

    /// Runs the precondition on `pool`.
    pub fn run(self, pool: &Pool) {
        match self {
            Before::Fresh => {}
            Before::Tiny => {
                let n = pool
                    .imap_unordered(tiny, 0..20_000u64, 1)
                    .filter(Result::is_ok)
                    .count();
                assert_eq!(n, 20_000);
            }
            Before::Imap1ms => {
                let n = pool
                    .imap_unordered(spin_us, vec![1_000u64; 200], 1)
                    .filter(Result::is_ok)
                    .count();
                assert_eq!(n, 200);
            }
        }
    }
}

/// How the timed job is submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `map` with default chunks.
    Map,
    /// `imap_unordered` with chunksize 1.
    ImapUnordered,
}

impl Mode {
    /// Both, in table order.
    pub const ALL: [Mode; 2] = [Mode::Map, Mode::ImapUnordered];

    /// The name `python/sched.py` takes.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Map => "map",
            Mode::ImapUnordered => "imap_unordered",
        }
    }
}

/// Builds a pool of `processes`, runs `before` on it, then times `mode`
/// over the workload (the pool's start and the precondition are not
/// timed).
pub fn time_forkpool(
    w: &Workload,
    kind: Kind,
    processes: usize,
    before: Before,
    mode: Mode,
) -> Duration {
    let pool = Pool::new(processes).expect("pool");
    before.run(&pool);
    let task = kind.task();
    let start = Instant::now();
    let total: u64 = match mode {
        Mode::Map => pool
            .map(task, w.durations.iter().copied())
            .expect("map")
            .iter()
            .sum(),
        Mode::ImapUnordered => pool
            .imap_unordered(task, w.durations.iter().copied(), 1)
            .map(|r| r.expect("task"))
            .sum(),
    };
    let took = start.elapsed();
    assert_eq!(total, w.durations.iter().sum::<u64>());
    took
}

/// The ceiling: the durations dealt round robin to `processes` plainly
/// forked children that spin through their share and `_exit`.
pub fn time_raw_fork(w: &Workload, kind: Kind, processes: usize) -> Duration {
    let start = Instant::now();
    let mut pids = Vec::with_capacity(processes);
    for p in 0..processes {
        // SAFETY: the child only reads the clock and the inherited list,
        // spins or sleeps (nanosleep), and `_exit`s: no allocation, no lock.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                for &us in w.durations.iter().skip(p).step_by(processes) {
                    match kind {
                        Kind::Spin => spin_us(us),
                        Kind::Sleep => sleep_us(us),
                    };
                }
                exit_child(0)
            }
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    wait_exited_ok(pids);
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workloads_are_the_issues() {
        let w = workloads(1.0);
        assert_eq!(w[0].durations, vec![500; 2000]);
        let tail = &w[1].durations;
        assert_eq!(tail.len(), 1000);
        assert!(tail.iter().enumerate().all(|(i, &d)| if i % 50 == 49 {
            (20_000..=60_000).contains(&d)
        } else {
            (100..=1_000).contains(&d)
        }));
        assert_eq!(w[2].durations.len(), 3040);
        assert_eq!(
            w[2].ideal(2),
            Duration::from_micros((3000 * 20 + 40 * 25_000) / 2)
        );
    }

    #[test]
    fn every_mode_and_precondition_runs_the_whole_list() {
        let w = &workloads(0.01)[1];
        for before in Before::ALL {
            for mode in Mode::ALL {
                assert!(time_forkpool(w, Kind::Spin, 2, before, mode) > Duration::ZERO);
            }
        }
        for kind in [Kind::Spin, Kind::Sleep] {
            let raw = time_raw_fork(w, kind, 2);
            assert!(raw >= w.ideal(2) / 2, "{raw:?}");
        }
    }
}
