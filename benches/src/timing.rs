//! Timing for the comparison runner, and pinning to one CPU.
//!
//! Criterion does its own statistics; the runner times each workload a few
//! times after one warm-up run and keeps the median, as the Python side
//! (`python/_common.py`) does.

use std::time::Duration;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// A few timings of one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Every timed run, in order.
    pub runs: Vec<Duration>,
}

impl Sample {
    /// The median run (the mean of the middle two for an even count).
    ///
    /// # Panics
    ///
    /// If there are no runs.
    pub fn median(&self) -> Duration {
        let mut sorted = self.runs.clone();
        sorted.sort();
        let n = sorted.len();
        assert!(n > 0, "a sample with no runs");
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        }
    }

    /// The fastest run.
    ///
    /// # Panics
    ///
    /// If there are no runs.
    pub fn min(&self) -> Duration {
        *self.runs.iter().min().expect("a sample with no runs")
    }
}

/// Runs `once` one time untimed (warm-up), then `reps` times, each run
/// reporting its own duration (so set-up inside `once` can stay untimed).
pub fn sample(reps: usize, mut once: impl FnMut() -> Duration) -> Sample {
    once();
    Sample {
        runs: (0..reps.max(1)).map(|_| once()).collect(),
    }
}

/// While alive, the calling thread (and every thread and process it starts)
/// runs on CPU 0 only; dropping it restores the previous affinity.
///
/// Pin before building a pool: the zygote, the workers and the collector
/// thread inherit the affinity of the thread that builds it.
#[derive(Debug)]
pub struct OneCpu {
    previous: CpuSet,
}

impl OneCpu {
    /// Pins the calling thread to CPU 0.
    ///
    /// # Errors
    ///
    /// If the affinity cannot be read or set.
    pub fn pin() -> nix::Result<OneCpu> {
        let previous = sched_getaffinity(Pid::from_raw(0))?;
        let mut one = CpuSet::new();
        one.set(0)?;
        sched_setaffinity(Pid::from_raw(0), &one)?;
        Ok(OneCpu { previous })
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        let odd = Sample {
            runs: vec![ms(5), ms(1), ms(3)],
        };
        assert_eq!(odd.median(), ms(3));
        assert_eq!(odd.min(), ms(1));
        let even = Sample {
            runs: vec![ms(4), ms(1), ms(2), ms(3)],
        };
        assert_eq!(even.median(), Duration::from_micros(2500));
    }
}
