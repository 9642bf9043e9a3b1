//! Forking from the threaded test harness, carefully.
//!
//! libtest runs every test on its own thread, so `fork` here always happens in
//! a multithreaded process: the child does only its work and ends with
//! `_exit`, never returning into the harness; failures travel back through
//! the exit code and a pipe; the parent waits only for its own pids, with a
//! timeout, so a hung child fails the test instead of hanging it.

#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

/// How long any child may take before the test gives up on it.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// A forked child running a test closure.
pub struct Child {
    pid: Pid,
    report: File,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `_exit(code)`, with what the child wrote to the report pipe.
    Exited(i32, String),
    /// Killed by a signal.
    Signaled(Signal),
}

/// Runs `work` in `n` forked children at once and waits for them all;
/// each must succeed.
pub fn in_children(n: usize, work: impl Fn() -> Result<(), String>) {
    join_all(spawn_each(0..n, |_| work()));
}

/// Runs `step` `times` times over in each of `n` forked children at once
/// and waits for them all; a failed step fails its child, and the test.
pub fn in_children_times<E: std::fmt::Display>(
    n: usize,
    times: usize,
    step: impl Fn() -> Result<(), E>,
) {
    in_children(n, || {
        (0..times).try_for_each(|_| step().map_err(|e| e.to_string()))
    });
}

/// Forks a child per item, each running `work(item)`, all at once; the
/// children are not waited for yet.
pub fn spawn_each<I>(
    items: impl IntoIterator<Item = I>,
    work: impl Fn(I) -> Result<(), String>,
) -> Vec<Child> {
    items.into_iter().map(|item| spawn(|| work(item))).collect()
}

/// Waits for every child (each must succeed); returns their pids, in order.
pub fn join_all(children: Vec<Child>) -> Vec<Pid> {
    children
        .into_iter()
        .map(|child| {
            let pid = child.pid();
            child.join();
            pid
        })
        .collect()
}

/// Two children fill one half of `array`'s rows each with their pid (each
/// pre-faulting its half first); asserts every element of each half holds
/// its child's pid.
pub fn two_children_fill_halves_with_their_pids(array: &forkpool_shm::SharedArray<f64>) {
    let pids = join_all(spawn_each(array.row_blocks(2), |rows| {
        array.prefault(rows.clone()).map_err(|e| e.to_string())?;
        array.fill_rows(rows, std::process::id() as f64);
        Ok(())
    }));
    let all = array.to_vec().unwrap();
    let (first, second) = all.split_at(all.len() / 2);
    for (half, pid, whose) in [(first, pids[0], "first"), (second, pids[1], "second")] {
        let pid = pid.as_raw() as f64;
        assert!(
            half.iter().all(|&x| x == pid),
            "the {whose} half is the {whose} child's"
        );
    }
}

/// Asserts that `text` (an error's message) contains each of `parts`.
#[track_caller]
pub fn assert_says(text: impl std::fmt::Display, parts: &[&str]) {
    let text = text.to_string();
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

/// Forks a child that runs `work` and `_exit`s: 0 if it returned `Ok`, 1 with
/// the message if it returned `Err`, 2 with the message if it panicked.
pub fn spawn<F: FnOnce() -> Result<(), String>>(work: F) -> Child {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only `work` (test code that uses the crate and
    // async-signal-tolerant calls; glibc's malloc is fork-safe) and ends with
    // `_exit`, never returning into the harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // A child dies with the thread that forked it: a test that fails
            // (panics) before killing the children it parked in a sleep loop
            // must not leave them running, holding the harness's output pipe
            // open (a grandchild dies with its child the same way).
            // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety
            // preconditions.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent.as_raw() {
                    // The parent died before the death signal was armed.
                    libc::_exit(3);
                }
            }
            drop(read_end);
            let (code, message) = match catch_unwind(AssertUnwindSafe(work)) {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(message)) => (1, message),
                Err(panic) => {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into());
                    (2, format!("panicked: {text}"))
                }
            };
            let _ = nix::unistd::write(&write_end, message.as_bytes());
            // SAFETY: ends the child at once, without running the parent's
            // exit handlers or returning into the test harness.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            set_nonblocking(&read_end);
            Child {
                pid: child,
                report: File::from(read_end),
            }
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).expect("F_GETFL");
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).expect("F_SETFL");
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `SIGKILL`.
    pub fn kill(&self) {
        kill(self.pid, Signal::SIGKILL).expect("kill");
    }

    /// Waits (for this pid only) until the child ends, at most
    /// `CHILD_TIMEOUT`; a child still running then is killed and the test
    /// fails.
    pub fn outcome(mut self) -> Outcome {
        let deadline = Instant::now() + CHILD_TIMEOUT;
        let status = loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                WaitStatus::StillAlive => {
                    if Instant::now() > deadline {
                        let _ = kill(self.pid, Signal::SIGKILL);
                        let _ = waitpid(self.pid, None);
                        panic!("child {} did not finish in {CHILD_TIMEOUT:?}", self.pid);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                status => break status,
            }
        };
        // The child wrote its message before exiting; read what is there
        // without waiting for EOF (other tests' children may hold copies of
        // the write end, inherited by their own forks).
        let mut message = Vec::new();
        let _ = self.report.read_to_end(&mut message);
        let message = String::from_utf8_lossy(&message).into_owned();
        match status {
            WaitStatus::Exited(_, code) => Outcome::Exited(code, message),
            WaitStatus::Signaled(_, signal, _) => Outcome::Signaled(signal),
            other => panic!("unexpected wait status {other:?}"),
        }
    }

    /// Waits and fails the test unless the child succeeded.
    pub fn join(self) {
        let pid = self.pid;
        match self.outcome() {
            Outcome::Exited(0, _) => {}
            other => panic!("child {pid} failed: {other:?}"),
        }
    }
}

/// Waits until `done()` holds, polling, at most `CHILD_TIMEOUT`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks a condition in a child: `Err(message)` instead of a panic.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// A lock shared by every test process, for tests that measure machine-wide
/// memory (`/proc/meminfo`) or use a lot of it: they must not overlap, under
/// `cargo test` (threads) or `cargo nextest` (processes) alike.
pub fn big_memory_lock() -> nix::fcntl::Flock<File> {
    let path = std::env::temp_dir().join("forkpool-shm-big-memory-tests.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the test lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock")
}

/// Runs `script` (with `args`) in a Python that has numpy, and returns what
/// it printed: the system's `python3` if it imports numpy, else one set up
/// under `target/` on first use (see the `numpy-env` crate). Fails the test
/// with what to install if there is none: no numpy test is skipped.
pub fn python_numpy(script: &str, args: &[&std::path::Path]) -> String {
    let python = numpy_env::python().unwrap_or_else(|e| panic!("the .npy tests need numpy: {e}"));
    let out = python
        .command()
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.describe()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}): {stderr}",
        python.describe(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `std::io::Error` in `err`'s chain of `source()`s, if any: the
/// OS's own error an `ShmError` carries.
pub fn io_source<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = err.source();
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// `err` and its `source()`s, joined by ": " (as `anyhow`'s `{:#}` prints).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        text = format!("{text}: {e}");
        next = e.source();
    }
    text
}
