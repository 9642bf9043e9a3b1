//! Which process is this, and is that one still alive?
//!
//! Guards (a held lock, claimed rows) belong to the process that took them.
//! `fork` copies a guard into the child, where it must not be used or
//! released. A guard records the *fork generation* it was made in: a counter
//! that a `pthread_atfork` child handler bumps in every child. Comparing it is
//! an atomic load, cheap enough for every `Deref` (unlike `getpid`, a system
//! call since glibc 2.25).
//!
//! Claims on rows record the claimer's pid and start time, so a claim left by
//! a process that died (or whose pid was reused) can be recognised as stale.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

static ATFORK: Once = Once::new();
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Cached identity of this process: pid and start time (clock ticks after
/// boot, field 22 of `/proc/<pid>/stat`), valid for generation `CACHED_GEN`.
static CACHED_GEN: AtomicU64 = AtomicU64::new(u64::MAX);
static CACHED_PID: AtomicI32 = AtomicI32::new(0);
static CACHED_START: AtomicU64 = AtomicU64::new(0);

extern "C" fn bump_generation() {
    // Runs in the child right after fork: async-signal-safe (one atomic add).
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The fork generation of this process: changes in every child after `fork`.
///
/// The first call registers the `pthread_atfork` handler; generations are
/// only compared between values read after that, which is the case for every
/// guard (it reads the generation when it is made).
pub(crate) fn generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no arguments as
        // the child handler; it only touches an atomic. Registration can only
        // fail with ENOMEM; guards must not go on without the handler, so that
        // panics below.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(bump_generation)) };
        assert_eq!(
            rc,
            0,
            "pthread_atfork failed: {}",
            nix::errno::Errno::from_raw(rc)
        );
    });
    GENERATION.load(Ordering::Relaxed)
}

/// The fork generation, without registering the handler: for checks of
/// guards, whose constructor called [`generation`].
#[inline]
pub(crate) fn current_generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// This process's pid and start time.
pub(crate) fn identity() -> (i32, u64) {
    let generation = generation();
    if CACHED_GEN.load(Ordering::Acquire) == generation {
        return (
            CACHED_PID.load(Ordering::Relaxed),
            CACHED_START.load(Ordering::Relaxed),
        );
    }
    let pid = nix::unistd::getpid().as_raw();
    let start = stat_of(pid).map(|s| s.start_time).unwrap_or(0);
    CACHED_PID.store(pid, Ordering::Relaxed);
    CACHED_START.store(start, Ordering::Relaxed);
    CACHED_GEN.store(generation, Ordering::Release);
    (pid, start)
}

/// What we read from `/proc/<pid>/stat`.
struct Stat {
    state: char,
    start_time: u64,
}

impl From<procfs::process::Stat> for Stat {
    fn from(stat: procfs::process::Stat) -> Stat {
        Stat {
            state: stat.state,
            start_time: stat.starttime,
        }
    }
}

fn stat_of(pid: i32) -> Option<Stat> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(stat.into())
}

/// Whether the process `pid`, started at `start_time`, may still be
/// running. `false` only when it is known to be gone: no `/proc/<pid>`, a
/// zombie, or another process since (the pid was reused). When `/proc`
/// cannot be read for another reason (no descriptor left, no permission,
/// `/proc` not mounted) the answer is `true`: a row claim is cleared as stale
/// only when its holder is known to be dead, never on a failed read
/// (clearing a live claim would hand out a second `&mut` to its rows).
pub(crate) fn may_be_alive(pid: i32, start_time: u64) -> bool {
    let (me, my_start) = identity();
    if pid == me {
        // This process holds it, unless an earlier process with this pid did.
        return my_start == 0 || start_time == my_start;
    }
    match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
        Err(procfs::ProcError::NotFound(_)) => false,
        Err(_) => true,
        Ok(stat) => {
            let stat = Stat::from(stat);
            !matches!(stat.state, 'Z' | 'X' | 'x') && stat.start_time == start_time
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0";
        let parse = |text: &str| -> Option<Stat> {
            use procfs::FromRead;
            procfs::process::Stat::from_read(text.as_bytes())
                .ok()
                .map(Stat::from)
        };
        let stat = parse(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
        assert!(parse("garbage").is_none());
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let (pid, start) = identity();
        assert_eq!(pid, std::process::id() as i32);
        assert!(start > 0);
        assert!(may_be_alive(pid, start));
        assert!(!may_be_alive(pid, start + 1));
        assert!(!may_be_alive(i32::MAX, start));
        let parent = nix::unistd::getppid().as_raw();
        let parent_start = stat_of(parent).unwrap().start_time;
        assert!(may_be_alive(parent, parent_start));
        assert!(!may_be_alive(parent, parent_start + 1));
    }
}
