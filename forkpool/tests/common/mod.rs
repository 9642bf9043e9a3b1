//! Helpers shared by the integration tests: process and descriptor checks
//! that read `/proc`.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use forkpool::{Pid, Pool};

/// The processes a pool owns, recorded so a test can check they are gone.
#[derive(Debug, Default, Clone)]
pub struct Procs {
    pub pids: Vec<Pid>,
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
            let left: Vec<(Pid, String)> = self
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
pub fn ours(pid: Pid) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let state = stat[close + 2..].split(' ').next()?.to_string();
    comm.starts_with("forkpool-").then_some(state)
}

/// Whether `pid` is alive (or a zombie).
pub fn exists(pid: Pid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Number of open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sends `sig` to `pid`.
pub fn kill(pid: Pid, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid.as_raw(), sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits until `cond` holds, failing after 30 s with `what`. The deadline
/// only turns a hang into a failure: it is generous because `cargo test`
/// runs many pool-forking tests at once, and on a loaded 2-core machine two
/// workers reaching their initializer once took longer than 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pool that, when the test drops it, checks that it leaves nothing
/// behind: none of its processes (not even a zombie) and, when the test runs
/// in a process of its own (`cargo nextest`) and this pool lived alone, not
/// one descriptor more or less than before it was built. (Under `cargo
/// test`, other tests open and close descriptors concurrently, and pools
/// that overlap count each other's; `tests/hygiene.rs` checks those cases
/// under a lock.)
pub struct TestPool {
    pool: Option<Pool>,
    procs: Procs,
    fds_before: Option<usize>,
    /// Its number among the pools this process made.
    nth: usize,
}

/// Pools made by this test process, and those alive now.
static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TestPool {
    /// `Pool::new(processes)`, checked on drop.
    pub fn new(processes: usize) -> TestPool {
        TestPool::build(|| Pool::new(processes))
    }

    /// A pool made by `build`, checked on drop.
    pub fn build(build: impl FnOnce() -> forkpool::Result<Pool>) -> TestPool {
        use std::sync::atomic::Ordering::SeqCst;
        let first_alive = LIVE.fetch_add(1, SeqCst) == 0;
        let alone = first_alive
            && std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
        let nth = MADE.fetch_add(1, SeqCst) + 1;
        let fds_before = alone.then(fd_count);
        let pool = build().expect("the pool starts");
        let procs = Procs::of(&pool);
        TestPool {
            pool: Some(pool),
            procs,
            fds_before,
            nth,
        }
    }

    /// Records the pool's current processes too (replacements), so the
    /// final check covers them.
    pub fn record(&mut self) {
        let pool = self.pool.as_ref().expect("alive until dropped");
        self.procs.add(pool);
    }
}

impl std::ops::Deref for TestPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        self.pool.as_ref().expect("alive until dropped")
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.record();
        drop(self.pool.take());
        let alone = LIVE.fetch_sub(1, SeqCst) == 1 && MADE.load(SeqCst) == self.nth;
        if std::thread::panicking() {
            return; // the test already failed; don't hide why
        }
        self.procs.assert_gone();
        if let Some(before) = self.fds_before.filter(|_| alone) {
            assert_eq!(
                fd_count(),
                before,
                "descriptors leaked (or closed) by the pool"
            );
        }
    }
}

/// Runs the test `name` of the current test binary in a process of its own
/// (with `FORKPOOL_TEST_CHILD=name` set) and asserts that it passed, within
/// `secs` seconds. For tests that change process-wide state (resource
/// limits, the panic hook) that other tests of the binary must not see.
/// Returns `true` in the child, where the caller runs the real test body.
pub fn in_own_process(name: &str, secs: u64) -> bool {
    if std::env::var("FORKPOOL_TEST_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("FORKPOOL_TEST_CHILD", name)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within {secs} s in its own process");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.success(),
        "{name} failed in its own process:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{name} did not run in its own process:\n{text}"
    );
    false
}

/// This process's open descriptors, by number and target (without the
/// one that lists them).
pub fn fd_table() -> std::collections::BTreeMap<i32, String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            (!target.starts_with("/proc/")).then_some((fd, target))
        })
        .collect()
}

/// Lowers this process's soft `RLIMIT_NOFILE` to `limit`.
pub fn set_nofile(limit: u64) {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, hard)
        .unwrap();
}

/// Opens `/dev/null` until the descriptor table is full, then closes
/// `free` of them: the caller holds the rest until it drops them.
pub fn fill_fds_leaving(free: usize) -> Vec<std::os::fd::OwnedFd> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(std::os::fd::OwnedFd::from(f)),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
    }
    assert!(
        held.len() >= free,
        "only {} descriptors were free",
        held.len()
    );
    held.truncate(held.len() - free);
    held
}

/// Runs `f` on a thread and waits for it up to `secs`: a hang is a test
/// failure, not a stuck test run (the stuck thread is left behind).
pub fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (hung)"))
}
