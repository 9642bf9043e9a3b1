//! The machine's limits, measured in the same run as the workloads they
//! bound: `memset` and `memcpy` bandwidth, a raw pipe ping-pong (latency),
//! raw pipe throughput (payloads), and bare `fork` + `_exit` + `waitpid`
//! (start-up). Task throughput is bounded by `rayon` on threads
//! ([`crate::tasks::RayonMap`]).
//!
//! The forked helpers here only read, write and `_exit` (async-signal-safe
//! calls), so they may be forked from the multithreaded benchmark process.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe, read, write};

/// Splits `len` into `parts` contiguous ranges of whole 4 KiB pages (the last
/// one takes the rest), so threads never share a page.
fn page_split(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let pages = len.div_ceil(4096);
    let per = pages.div_ceil(parts) * 4096;
    (0..parts)
        .map(|i| (i * per).min(len)..((i + 1) * per).min(len))
        .filter(|r| !r.is_empty())
        .collect()
}

/// `memset` of `buf` to `byte` by `threads` threads (1: on this thread,
/// without starting one), each on its own contiguous part (glibc's `memset`: `rep stosb` or non-temporal stores for
/// large sizes, its best strategy on this CPU). Returns the wall time.
pub fn memset(buf: &mut [u8], byte: u8, threads: usize) -> Duration {
    let parts = page_split(buf.len(), threads);
    let start = Instant::now();
    if threads <= 1 {
        // SAFETY: `buf` is a valid, exclusive byte slice.
        unsafe { libc::memset(buf.as_mut_ptr().cast(), i32::from(byte), buf.len()) };
        return start.elapsed();
    }
    std::thread::scope(|s| {
        let mut rest = &mut *buf;
        let mut done = 0;
        for r in parts {
            let (mine, tail) = rest.split_at_mut(r.end - done);
            rest = tail;
            done = r.end;
            s.spawn(move || {
                // SAFETY: `mine` is a valid, exclusive byte slice.
                unsafe { libc::memset(mine.as_mut_ptr().cast(), i32::from(byte), mine.len()) };
            });
        }
    });
    start.elapsed()
}

/// `memcpy` of `src` into `dst` (same length) by `threads` threads (1: on
/// this thread), each on its own contiguous part. Returns the wall time.
///
/// # Panics
///
/// If the lengths differ.
pub fn memcpy(dst: &mut [u8], src: &[u8], threads: usize) -> Duration {
    assert_eq!(dst.len(), src.len(), "memcpy of unequal lengths");
    let parts = page_split(dst.len(), threads);
    let start = Instant::now();
    if threads <= 1 {
        dst.copy_from_slice(src);
        return start.elapsed();
    }
    std::thread::scope(|s| {
        let mut rest = &mut *dst;
        let mut done = 0;
        for r in parts {
            let (mine, tail) = rest.split_at_mut(r.end - done);
            rest = tail;
            done = r.end;
            let from = &src[r];
            s.spawn(move || mine.copy_from_slice(from));
        }
    });
    start.elapsed()
}

/// A private buffer of `len` bytes with every page already faulted in (the
/// state `memset` and `memcpy` are measured in).
pub fn faulted_buffer(len: usize) -> Vec<u8> {
    vec![1u8; len]
}

/// Ends a forked helper at once.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe; it ends the process without
    // running the exit handlers of the program it is a fork of.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor from 3 up except `keep`, in the child of a fork:
/// a helper must not hold the ends of other pipes (another helper's, a
/// pool's), or their readers would never see EOF.
fn close_other_fds(keep: [i32; 2]) {
    let (a, b) = (keep[0].min(keep[1]) as u32, keep[0].max(keep[1]) as u32);
    let ranges = [
        (3, a.checked_sub(1)),
        (a + 1, b.checked_sub(1)),
        (b + 1, Some(u32::MAX)),
    ];
    for (first, last) in ranges {
        if let Some(last) = last
            && first <= last
        {
            // SAFETY: `close_range` only closes descriptors; the child uses
            // none of those it closes.
            unsafe { libc::close_range(first, last, 0) };
        }
    }
}

/// Forks a helper running `child` on the two pipe ends it is given (the
/// read end from the parent, the write end back), returning the parent's
/// ends and the pid.
pub(crate) fn fork_helper(child: impl FnOnce(OwnedFd, OwnedFd)) -> (OwnedFd, OwnedFd, Pid) {
    let (down_r, down_w) = pipe().expect("pipe");
    let (up_r, up_w) = pipe().expect("pipe");
    // SAFETY: the child only closes descriptors, reads and writes its pipes
    // (async-signal-safe calls) and `_exit`s, so forking from a
    // multithreaded process is sound.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(down_w);
            drop(up_r);
            close_other_fds([down_r.as_raw_fd(), up_w.as_raw_fd()]);
            child(down_r, up_w);
            exit_child(0)
        }
        ForkResult::Parent { child } => (down_w, up_r, child),
    }
}

/// Ends a helper: closing its input makes it see EOF and exit.
fn stop_helper(to_child: &mut Option<OwnedFd>, child: Pid) {
    drop(to_child.take());
    let _ = waitpid(child, None);
}

/// A child process that echoes one byte per message: the floor under any
/// cross-process round trip (two pipe writes, two reads, two wake-ups).
#[derive(Debug)]
pub struct PingPong {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    child: Pid,
    spin: bool,
}

/// Makes reads of `fd` return `EAGAIN` instead of blocking.
fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL"));
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).expect("F_SETFL");
}

/// Reads one byte from a non-blocking `fd`, polling until it comes; `false`
/// on EOF or error.
fn spin_read_byte(fd: &OwnedFd, byte: &mut [u8; 1]) -> bool {
    loop {
        match read(fd.as_fd(), byte) {
            Ok(1) => return true,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => std::hint::spin_loop(),
            _ => return false,
        }
    }
}

impl PingPong {
    /// Forks the echoing child; both ends block in `read` while they wait.
    pub fn start() -> PingPong {
        fn echo(from: OwnedFd, to: OwnedFd) {
            let mut byte = [0u8; 1];
            while let Ok(1) = read(from.as_fd(), &mut byte) {
                if write(&to, &byte).is_err() {
                    break;
                }
            }
        }
        let (to_child, from_child, child) = fork_helper(echo);
        PingPong {
            to_child: Some(to_child),
            from_child,
            child,
            spin: false,
        }
    }

    /// Forks the echoing child; both ends busy-poll non-blocking pipes
    /// instead of sleeping, so no waiting CPU ever goes idle. Not a way to
    /// run (it burns both CPUs while waiting), and meaningless on one CPU:
    /// it shows what the sleep and wake-up cost in a round trip.
    pub fn start_spinning() -> PingPong {
        fn echo(from: OwnedFd, to: OwnedFd) {
            set_nonblocking(&from);
            let mut byte = [0u8; 1];
            while spin_read_byte(&from, &mut byte) {
                if write(&to, &byte).is_err() {
                    break;
                }
            }
        }
        let (to_child, from_child, child) = fork_helper(echo);
        set_nonblocking(&from_child);
        PingPong {
            to_child: Some(to_child),
            from_child,
            child,
            spin: true,
        }
    }

    /// One round trip.
    pub fn round_trip(&self) {
        let mut byte = [7u8; 1];
        write(self.to_child.as_ref().expect("running"), &byte).expect("write");
        if self.spin {
            assert!(spin_read_byte(&self.from_child, &mut byte), "echo ended");
        } else {
            assert_eq!(read(self.from_child.as_fd(), &mut byte).expect("read"), 1);
        }
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        stop_helper(&mut self.to_child, self.child);
    }
}

/// A child process that reads length-prefixed messages through a pipe of
/// the default size (64 KiB, as the pool's) and acknowledges each with one
/// byte: the floor under moving a payload to another process.
#[derive(Debug)]
pub struct PipeSink {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    child: Pid,
}

/// Reads exactly `buf.len()` bytes; `false` on EOF or error.
fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match read(fd.as_fd(), &mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes all of `buf`.
fn write_all(fd: &OwnedFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("pipe write: {e}"),
        }
    }
}

/// The sink's life: read a length, then that many bytes, acknowledge, until
/// EOF.
fn sink_loop(from: &OwnedFd, to: &OwnedFd, buf: &mut [u8]) {
    let mut len = [0u8; 8];
    while read_exact(from, &mut len) {
        let mut left = u64::from_le_bytes(len) as usize;
        while left > 0 {
            let n = left.min(buf.len());
            if !read_exact(from, &mut buf[..n]) {
                return;
            }
            left -= n;
        }
        if write(to, &[1u8]).is_err() {
            return;
        }
    }
}

impl PipeSink {
    /// Forks the reading child; the pipe has the default size (64 KiB).
    pub fn start() -> PipeSink {
        Self::start_with_pipe_size(None)
    }

    /// Forks the reading child, with the pipe to it resized to `bytes`
    /// (`F_SETPIPE_SZ`; unprivileged processes may go up to
    /// `/proc/sys/fs/pipe-max-size`, 1 MiB by default): fewer wake-ups of
    /// the reader per megabyte.
    ///
    /// # Panics
    ///
    /// If the pipe cannot be resized.
    pub fn start_with_pipe_size(bytes: Option<usize>) -> PipeSink {
        // A pipe read returns at most the pipe's size (1 MiB at most here).
        // Allocated before the fork: the child calls no `malloc`.
        let mut buf = vec![0u8; 1 << 20];
        let sink = move |from: OwnedFd, to: OwnedFd| {
            sink_loop(&from, &to, &mut buf);
            // Not freed: the child calls no `free` either; `_exit` follows.
            std::mem::forget(buf);
        };
        let (to_child, from_child, child) = fork_helper(sink);
        if let Some(bytes) = bytes {
            use nix::fcntl::{FcntlArg, fcntl};
            let size = i32::try_from(bytes).expect("pipe size");
            fcntl(&to_child, FcntlArg::F_SETPIPE_SZ(size)).expect("F_SETPIPE_SZ");
        }
        PipeSink {
            to_child: Some(to_child),
            from_child,
            child,
        }
    }

    /// Sends `payload` (after its 8-byte length) and waits for the
    /// acknowledgement.
    pub fn send(&self, payload: &[u8]) {
        let to = self.to_child.as_ref().expect("running");
        write_all(to, &(payload.len() as u64).to_le_bytes());
        write_all(to, payload);
        let mut ack = [0u8; 1];
        assert_eq!(read(self.from_child.as_fd(), &mut ack).expect("read"), 1);
    }
}

impl Drop for PipeSink {
    fn drop(&mut self) {
        stop_helper(&mut self.to_child, self.child);
    }
}

/// Forks `n` children that `_exit(0)` at once and waits for them: the
/// floor under starting `n` worker processes from this process, with its
/// current memory (fork copies the page tables of private memory).
pub fn fork_exit_wait(n: usize) -> Duration {
    let start = Instant::now();
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the child calls only `_exit`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => exit_child(0),
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    wait_exited_ok(pids);
    start.elapsed()
}

/// Waits for each of `pids` (children of this process), asserting each
/// exited with status 0.
pub(crate) fn wait_exited_ok(pids: Vec<nix::unistd::Pid>) {
    for pid in pids {
        assert_eq!(
            waitpid(pid, None).expect("waitpid"),
            WaitStatus::Exited(pid, 0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_split_covers_the_buffer_in_page_multiples() {
        let parts = page_split(10 * 4096 + 5, 3);
        assert_eq!(parts, [0..16384, 16384..32768, 32768..40965]);
        assert_eq!(page_split(100, 4), vec![0..100usize]);
    }

    #[test]
    fn memset_and_memcpy_touch_every_byte() {
        let mut a = vec![0u8; 3 * 4096 + 17];
        memset(&mut a, 9, 2);
        assert!(a.iter().all(|&b| b == 9));
        let mut b = vec![0u8; a.len()];
        memcpy(&mut b, &a, 3);
        assert_eq!(a, b);
    }

    #[test]
    fn helpers_answer_and_exit() {
        for ping in [PingPong::start(), PingPong::start_spinning()] {
            ping.round_trip();
            ping.round_trip();
        }
        for sink in [
            PipeSink::start(),
            PipeSink::start_with_pipe_size(Some(1 << 20)),
        ] {
            sink.send(&vec![3u8; 3_000_000]);
            sink.send(&[]);
        }
        fork_exit_wait(2);
    }
}
