//! When a process of the pool loses its parent: the program using the pool
//! is killed (the zygote and workers must go), or the zygote is killed (the
//! pool must say so, not hang).
//!
//! Orphans are adopted by the nearest "child subreaper", else by init; this
//! test process makes itself a subreaper so it can reap them and read how
//! they ended. The tests take one lock: a fork from this process must not
//! happen while another test holds a lock the child would need.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::Mutex;
use std::time::Duration;

use common::Procs;
use forkpool::{Error, Pool};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    g
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Reaps an adopted orphan, waiting up to 10 s.
fn reap(pid: Pid) -> WaitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(status) => return status,
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
    }
}

#[test]
fn killing_the_program_ends_its_zygote_and_workers() {
    let _g = serial();
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only builds a pool, writes to a pipe and sleeps;
    // the lock above keeps other tests of this binary from holding locks
    // it needs. It never returns into the test harness.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(r);
            let pool = Pool::new(2).unwrap();
            let mut line = format!("{}", pool.zygote_pid());
            for p in pool.worker_pids() {
                line += &format!(" {p}");
            }
            line += "\n";
            nix::unistd::write(&w, line.as_bytes()).unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let file = std::fs::File::from(r);
            let mut line = String::new();
            BufReader::new(file).read_line(&mut line).unwrap();
            let pids: Vec<Pid> = line
                .split_whitespace()
                .map(|p| Pid::from_raw(p.parse().unwrap()))
                .collect();
            assert_eq!(pids.len(), 3, "{line}");
            assert!(pids.iter().all(|&p| common::ours(p).is_some()));
            // The program dies without any chance to clean up.
            nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
            assert!(matches!(
                waitpid(child, None).unwrap(),
                WaitStatus::Signaled(..)
            ));
            // The zygote, adopted by us, saw its control socket close,
            // killed and reaped its workers, and exited cleanly.
            let zygote = reap(pids[0]);
            assert_eq!(zygote, WaitStatus::Exited(pids[0], 0));
            Procs { pids }.assert_gone();
        }
    }
}

#[test]
fn a_killed_zygote_left_its_workers_as_zombies() {
    let _g = serial();
    let pool = Pool::new(2).unwrap();
    let procs = Procs::of(&pool);
    let workers = pool.worker_pids();
    let h = pool.map_async(sleep_ms, [30_000u64; 4]);
    std::thread::sleep(Duration::from_millis(50));
    common::kill(pool.zygote_pid(), libc::SIGKILL);
    let err = h.get().unwrap_err();
    match &err {
        Error::Broken { reason } => {
            assert!(reason.contains("zygote"), "{reason}");
            assert!(reason.contains("SIGKILL"), "{reason}");
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(matches!(pool.map(sleep_ms, [1]), Err(Error::Broken { .. })));
    // The workers died with their zygote (PR_SET_PDEATHSIG) and came to
    // this process, a subreaper: the pool reaped them. Nothing is left, not
    // even a zombie, and before the pool is dropped.
    Procs { pids: workers }.assert_gone();
    drop(pool);
    procs.assert_gone();
}

#[test]
fn a_panicking_caller_leaves_nothing_behind() {
    let _g = serial();
    let procs = std::panic::catch_unwind(|| {
        let pool = Pool::new(2).unwrap();
        let procs = Procs::of(&pool);
        let _running = pool.map_async(sleep_ms, [10_000u64; 4]);
        std::panic::panic_any(procs);
    })
    .unwrap_err();
    procs.downcast::<Procs>().unwrap().assert_gone();
}
