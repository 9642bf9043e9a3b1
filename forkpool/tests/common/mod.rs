//! Helpers shared by the integration tests: process and descriptor checks
//! that read `/proc`.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use forkpool::Pool;

/// The processes a pool owns, recorded so a test can check they are gone.
#[derive(Debug, Default, Clone)]
pub struct Procs {
    pub pids: Vec<i32>,
}

impl Procs {
    /// The zygote and the workers of `pool`, now.
    pub fn of(pool: &Pool) -> Procs {
        let mut p = Procs::default();
        p.add(pool);
        p
    }

    /// Adds the pool's current processes (after replacements, say).
    pub fn add(&mut self, pool: &Pool) {
        for pid in std::iter::once(pool.zygote_pid()).chain(pool.worker_pids()) {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
    }

    /// Asserts that none of the processes exists any more, not even as a
    /// zombie. Waits up to 5 s for processes that are exiting (a worker
    /// orphaned by a killed zygote is reaped by init, not by us).
    pub fn assert_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<(i32, String)> = self
                .pids
                .iter()
                .filter_map(|&pid| ours(pid).map(|state| (pid, state)))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pool processes still exist (pid, state): {left:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The state letter of `pid` if it is one of ours (a forkpool zygote or
/// worker, alive or zombie).
pub fn ours(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let state = stat[close + 2..].split(' ').next()?.to_string();
    comm.starts_with("forkpool-").then_some(state)
}

/// Whether `pid` is alive (or a zombie).
pub fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Number of open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits until `cond` holds, failing after 10 s with `what`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
