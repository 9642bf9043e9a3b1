//! The zygote: a single-threaded process, forked once when the pool starts,
//! that forks every worker.
//!
//! After `fork` only the forking thread exists in the child, and a lock
//! another thread held stays locked there forever. The parent has helper
//! threads (the pool's I/O thread, the user's), so workers (the first ones,
//! replacements after a crash, recycled ones) are never forked from it: the
//! zygote, which never starts a thread, forks them all. It reaps them
//! (`SIGCHLD` through a `signalfd`) and reports each exit status to the
//! parent; it kills them all and exits when the parent shuts its control
//! socket down or dies.
//!
//! Workers set `PR_SET_PDEATHSIG` to `SIGKILL`: that signal fires when the
//! *thread* that forked them exits, and the zygote's only thread lives as
//! long as the zygote. The zygote itself relies on its control socket
//! instead, because the parent thread that built the pool may be
//! short-lived.
//!
//! So a zygote killed by SIGKILL takes its workers with it (a worker forked
//! as the zygote died sees its parent changed and exits; one blocked on its
//! task pipe also sees EOF once the pool drops its ends). Their exit
//! statuses go to whoever adopts them: init, or the program if it is a
//! child subreaper, in which case the pool's collector reaps them. The
//! zygote takes no lock after its fork (see `worker`'s module docs):
//! nothing here prints, reads the environment or touches the panic hook.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid};

use crate::control::{self, Event, Received, Request, SpawnCall};
use crate::error::ExitCause;
use crate::worker::{self, Initializer};

/// Signal state to give back to workers.
struct Inherited {
    mask: SigSet,
    chld: SigAction,
}

/// The zygote's life. Never returns.
pub(crate) fn run(ctrl: OwnedFd, mut init: Initializer) -> ! {
    let _ = nix::sys::prctl::set_name(c"forkpool-zygote");
    let chld = SigSet::from_iter([Signal::SIGCHLD]);
    // SIGCHLD must not be ignored here (children would vanish unreaped,
    // their statuses lost): default action, blocked, read from a signalfd.
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing the default disposition runs no handler code.
    let old_chld = unsafe { signal::sigaction(Signal::SIGCHLD, &dfl) }.unwrap_or(dfl);
    let mut old_mask = SigSet::empty();
    let setup = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), Some(&mut old_mask))
        .and_then(|()| SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let Ok(sfd) = setup else {
        // Without a signalfd the zygote cannot reap; the parent sees it exit
        // at once and reports the pool broken.
        worker::exit(1)
    };
    let inherited = Inherited {
        mask: old_mask,
        chld: old_chld,
    };
    let mut workers: BTreeSet<Pid> = BTreeSet::new();

    loop {
        let (ctrl_ready, sig_ready) = {
            let mut fds = [
                PollFd::new(ctrl.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sig_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&ctrl, &mut workers);
        }
        if ctrl_ready {
            match control::recv::<Request>(ctrl.as_fd(), true) {
                Ok(Received::Message(Request::Spawn { slot }, _)) => {
                    spawn(slot, &ctrl, &sfd, &inherited, &mut init, &mut workers)
                }
                Ok(Received::Message(Request::Kill { pid }, _)) => {
                    // Only a worker not yet reaped: its pid cannot have been reused.
                    if workers.contains(&pid) {
                        let _ = signal::kill(pid, Signal::SIGKILL);
                    }
                }
                Ok(Received::WouldBlock) => {}
                Ok(Received::Eof) | Err(_) => break,
            }
        }
    }

    // The parent shut the control socket down, or died: no worker outlives
    // this zygote.
    for &pid in &workers {
        let _ = signal::kill(pid, Signal::SIGKILL);
    }
    for pid in std::mem::take(&mut workers) {
        loop {
            match wait4(pid.as_raw(), 0) {
                Err(Errno::EINTR) => continue,
                Ok(Some((status, peak_rss))) => {
                    if let Some((pid, cause)) = exit_cause(status) {
                        let exited = Event::Exited {
                            pid,
                            cause,
                            peak_rss,
                        };
                        let _ = control::send(ctrl.as_fd(), &exited, &[]);
                    }
                }
                Ok(None) | Err(_) => {}
            }
            break;
        }
    }
    worker::exit(0)
}

fn exit_cause(status: WaitStatus) -> Option<(Pid, ExitCause)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, ExitCause::Exited(code))),
        WaitStatus::Signaled(pid, sig, core_dumped) => Some((
            pid,
            ExitCause::Signaled {
                signal: sig as i32,
                core_dumped,
            },
        )),
        _ => None,
    }
}

/// Reaps every worker that has exited and reports it.
fn reap(ctrl: &OwnedFd, workers: &mut BTreeSet<Pid>) {
    loop {
        match wait4(-1, libc::WNOHANG) {
            Ok(None) | Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
            Ok(Some((status, peak_rss))) => {
                if let Some((pid, cause)) = exit_cause(status) {
                    workers.remove(&pid);
                    // A failed send means the parent is gone; the main loop
                    // sees that on the socket.
                    let exited = Event::Exited {
                        pid,
                        cause,
                        peak_rss,
                    };
                    let _ = control::send(ctrl.as_fd(), &exited, &[]);
                }
            }
        }
    }
}

/// `waitpid` that also returns the child's peak resident memory in bytes
/// (`ru_maxrss` of `wait4`'s rusage; nix has no `wait4`). `Ok(None)`: with
/// `WNOHANG`, no child has exited.
fn wait4(pid: i32, flags: i32) -> nix::Result<Option<(WaitStatus, u64)>> {
    let mut status = 0;
    // SAFETY: `rusage` is plain integers and `timeval`s: all zeroes is a
    // valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals, valid for writes of their
    // types; wait4 is async-signal-safe and takes no lock.
    let got = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    match got {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        got => {
            let status = WaitStatus::from_raw(Pid::from_raw(got), status)?;
            // Linux reports ru_maxrss in KiB.
            Ok(Some((status, (usage.ru_maxrss.max(0) as u64) * 1024)))
        }
    }
}

/// Forks one worker and hands its pipe ends to the parent.
fn spawn(
    slot: u32,
    ctrl: &OwnedFd,
    sfd: &SignalFd,
    inherited: &Inherited,
    init: &mut Initializer,
    workers: &mut BTreeSet<Pid>,
) {
    let failed = |call: SpawnCall, errno: Errno| {
        let (limit, open) = crate::fds::usage();
        let _ = control::send(
            ctrl.as_fd(),
            &Event::SpawnFailed {
                slot,
                call,
                errno: errno as i32,
                limit,
                open: open as u64,
            },
            &[],
        );
    };
    let pipes = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .and_then(|task| nix::unistd::pipe2(OFlag::O_CLOEXEC).map(|result| (task, result)));
    let ((task_r, task_w), (result_r, result_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return failed(SpawnCall::Pipe2, e),
    };
    // The side channel for the descriptors of `Buffer`s (see `side`).
    let (side_parent, side_worker) = match crate::side::pair() {
        Ok(p) => p,
        Err(e) => return failed(SpawnCall::Socketpair, e),
    };
    let zygote = nix::unistd::getpid();
    // SAFETY: the zygote is single-threaded, so the child is a consistent
    // copy of it; the child branch ends in `worker::run`, which never
    // returns and ends with `_exit`.
    match unsafe { nix::unistd::fork() } {
        Err(e) => failed(SpawnCall::Fork, e),
        Ok(ForkResult::Child) => {
            if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                || nix::unistd::getppid() != zygote
            {
                worker::exit(0); // the zygote is already gone
            }
            // SAFETY: these descriptors belong to the zygote's objects,
            // which this process never uses or drops (it ends in `_exit`);
            // closing our copies keeps the zygote's liveness signals true.
            unsafe {
                libc::close(ctrl.as_raw_fd());
                libc::close(sfd.as_raw_fd());
            }
            drop(task_w);
            drop(result_r);
            drop(side_parent);
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&inherited.mask), None);
            // SAFETY: restores the disposition the user's program had.
            let _ = unsafe { signal::sigaction(Signal::SIGCHLD, &inherited.chld) };
            let _ = nix::sys::prctl::set_name(c"forkpool-worker");
            worker::run(task_r, result_w, side_worker, init)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(task_r);
            drop(result_w);
            drop(side_worker);
            workers.insert(child);
            let sent = control::send(
                ctrl.as_fd(),
                &Event::Spawned { slot, pid: child },
                &[
                    task_w.as_raw_fd(),
                    result_r.as_raw_fd(),
                    side_parent.as_raw_fd(),
                ],
            );
            if sent.is_err() {
                // The parent is gone; the main loop will see EOF and clean up.
            }
        }
    }
}
