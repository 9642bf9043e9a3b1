//! The side channel: descriptors of [`Buffer`](crate::Buffer)s travelling
//! beside the task and result frames.
//!
//! Each worker has, besides its task and result pipes, one end of a Unix
//! `SOCK_SEQPACKET` socketpair made by the zygote when it forks the worker;
//! the other end reaches the parent in the zygote's `Spawned` message. A
//! task or result that holds buffers is preceded on this socket by one or
//! more datagrams: a 16-byte head (task id `u64`, the task's descriptor
//! count `u32`, the index of the batch's first descriptor `u32`, all
//! little-endian) with up to [`MAX_FDS`] descriptors as `SCM_RIGHTS`.
//!
//! Order is what makes it work without any lookup: the sender writes a
//! task's descriptors before its frame, so by the time the other side reads
//! the frame, the descriptors are queued on the socket; and the decoder
//! meets the buffers of a task in the order the encoder met them, so each
//! buffer takes the next descriptor. A task costs nothing here unless it
//! holds buffers (no datagram, no system call).
//!
//! - Parent to worker: the parent sends at dispatch, without blocking (it
//!   holds the pool's lock). A full socket (the worker is behind the
//!   parent: a long task ahead of many small ones with buffers, or a
//!   stopped worker) is back-pressure, not an error: what it does not take
//!   waits in the parent, in task order, and the collector sends it when
//!   the socket has room. The worker receives while it decodes the task's
//!   arguments, and waits on the socket for a descriptor not there yet (the
//!   parent's death closes the socket, which ends the wait). A datagram of
//!   a later task first means this task's never come: an error. Descriptors
//!   of a task the worker did not finish decoding are closed when the next
//!   task looks for its own. An error sending (not a full socket) makes the
//!   parent stop the worker: its tasks fail with that error.
//! - Worker to parent: the worker sends a task's result descriptors
//!   (blocking) right after the task, before the frame is written; the
//!   collector drains the socket whenever it is readable, and a result
//!   frame marked [`FDS`](crate::frame::FDS) takes the descriptors of its
//!   task (the parent looks nowhere for the others).
//!
//! Every descriptor received is adopted into the descriptor registry
//! ([`crate::fds`]) at once, so a zygote forked meanwhile does not inherit
//! it, and is closed on every path that does not hand it to a `Buffer`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};

use crate::buffer::Outgoing;
use crate::control;
use crate::error::Error;
use crate::fds::PoolFd;

/// Most descriptors one datagram carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;
const HEAD: usize = 16;

/// The send buffer asked for on the parent's ends (best effort: capped by
/// `net.core.wmem_max`); room for the datagrams of the tasks a worker holds.
const SNDBUF: usize = 4 << 20;

/// How soon the collector tries again to send descriptors the kernel
/// refused for too many in flight.
pub(crate) const RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// Makes a worker's socketpair: `(parent's end, worker's end)`.
pub(crate) fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?;
    let _ = socket::setsockopt(&a, socket::sockopt::SndBuf, &SNDBUF);
    Ok((a, b))
}

/// Sends the descriptors of task `task`, in batches, blocking.
fn send(sock: BorrowedFd<'_>, task: u64, fds: &[Outgoing]) -> io::Result<()> {
    let total = total_of(fds)?;
    for (i, chunk) in fds.chunks(MAX_FDS).enumerate() {
        send_one(
            sock,
            task,
            total,
            (i * MAX_FDS) as u32,
            chunk,
            MsgFlags::empty(),
        )?;
    }
    Ok(())
}

fn total_of(fds: &[Outgoing]) -> io::Result<u32> {
    u32::try_from(fds.len())
        .map_err(|_| io::Error::other(format!("{} buffers in one task", fds.len())))
}

/// Sends one datagram: task `task`'s descriptors from index `first`.
fn send_one(
    sock: BorrowedFd<'_>,
    task: u64,
    total: u32,
    first: u32,
    chunk: &[Outgoing],
    flags: MsgFlags,
) -> io::Result<()> {
    let mut head = [0u8; HEAD];
    head[..8].copy_from_slice(&task.to_le_bytes());
    head[8..12].copy_from_slice(&total.to_le_bytes());
    head[12..].copy_from_slice(&first.to_le_bytes());
    let raw: Vec<RawFd> = chunk.iter().map(|s| s.fd().as_raw_fd()).collect();
    let iov = [IoSlice::new(&head)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    loop {
        match socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A datagram the parent has not sent yet: its socket was full.
struct Unsent {
    task: u64,
    total: u32,
    first: u32,
    /// Keep the memory files open until they are sent.
    fds: Vec<Outgoing>,
}

/// One datagram: some of a task's descriptors.
struct Batch {
    task: u64,
    total: u32,
    fds: Vec<PoolFd>,
    /// The kernel could not install them all (`MSG_CTRUNC`).
    truncated: bool,
}

enum Recv {
    Batch(Batch),
    Empty,
    Closed,
}

/// Receives one datagram without blocking.
fn recv(sock: BorrowedFd<'_>) -> io::Result<Recv> {
    let mut head = [0u8; HEAD];
    // Room for MAX_FDS descriptors and the header, as u64s for alignment.
    let mut cmsg = [0u64; MAX_FDS / 2 + 4];
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    let got = PoolFd::receiving(|adopter| {
        control::recv_with_fds(sock, flags, &mut head, &mut cmsg, adopter)
    })?;
    let Some(got) = got else {
        return Ok(Recv::Empty);
    };
    if got.bytes == 0 {
        return Ok(Recv::Closed);
    }
    if got.bytes != HEAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a {}-byte datagram on a worker's descriptor channel (heads are {HEAD})",
                got.bytes
            ),
        ));
    }
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    Ok(Recv::Batch(Batch {
        task: u64::from_le_bytes(head[..8].try_into().expect("8 bytes")),
        total: u32_at(8),
        fds: got.fds,
        truncated: got.truncated,
    }))
}

fn truncated_error(task: u64, arrived: usize, process: &'static str) -> Error {
    let (limit, open) = crate::fds::usage();
    Error::DescriptorLimit {
        call: "recvmsg",
        errno: Errno::EMFILE as i32,
        detail: format!(
            "receiving the buffer descriptors of task {task} (SCM_RIGHTS): {arrived} arrived, \
             the message was cut short (MSG_CTRUNC)"
        ),
        limit,
        open,
        process,
    }
}

// ---------------------------------------------------------------------------
// The parent's end.

/// The parent's end of one worker's side channel.
pub(crate) struct ParentSide {
    fd: Arc<PoolFd>,
    /// Datagrams received and not yet claimed by a result.
    pending: VecDeque<Batch>,
    /// Datagrams not sent yet, in task order: the socket was full (the
    /// worker is behind, or stopped). The collector sends them when the
    /// socket has room ([`ParentSide::wants_write`]).
    unsent: VecDeque<Unsent>,
    /// The kernel refused the last try for too many descriptors in flight
    /// (`ETOOMANYREFS`, for a user without `CAP_SYS_RESOURCE` past its
    /// `RLIMIT_NOFILE`): room is no event to poll for, so the collector
    /// tries again after [`RETRY`].
    refused: bool,
    /// The worker's end closed (it exited): nothing more to poll.
    closed: bool,
}

impl ParentSide {
    pub(crate) fn new(fd: PoolFd) -> Self {
        ParentSide {
            fd: Arc::new(fd),
            pending: VecDeque::new(),
            unsent: VecDeque::new(),
            refused: false,
            closed: false,
        }
    }

    /// The socket to poll for readability, while it may still deliver.
    pub(crate) fn poll_fd(&self) -> Option<Arc<PoolFd>> {
        (!self.closed).then(|| self.fd.clone())
    }

    /// Whether the collector must poll the socket for room: datagrams
    /// wait to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        !self.closed && !self.unsent.is_empty() && !self.refused
    }

    /// Whether datagrams wait for descriptors in flight to be received
    /// (see `refused`): then the collector tries again after [`RETRY`].
    pub(crate) fn wants_retry(&self) -> bool {
        !self.closed && !self.unsent.is_empty() && self.refused
    }

    /// Sends the descriptors of task `task` (none: nothing to do) after
    /// those still waiting, without blocking: what the socket does not take
    /// now waits, in order, for [`flush`](Self::flush). A full socket is
    /// back-pressure (the worker waits for what it needs); an error means
    /// the channel is unusable, and the worker must be stopped (it would
    /// wait for descriptors that cannot come).
    pub(crate) fn send(&mut self, task: u64, fds: Vec<Outgoing>) -> io::Result<()> {
        if fds.is_empty() {
            return Ok(());
        }
        let total = total_of(&fds)?;
        let mut fds = fds;
        let mut first = 0u32;
        while !fds.is_empty() {
            let rest = fds.split_off(fds.len().min(MAX_FDS));
            self.unsent.push_back(Unsent {
                task,
                total,
                first,
                fds: std::mem::replace(&mut fds, rest),
            });
            first += MAX_FDS as u32;
        }
        self.flush()
    }

    /// Sends what waits, in order, until the socket is full. On an error
    /// the waiting datagrams are dropped (their descriptors closed).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.refused = false;
        while let Some(d) = self.unsent.front() {
            if self.closed {
                // The worker exited: its tasks fail when that is reported.
                self.unsent.clear();
                return Ok(());
            }
            match send_one(
                self.fd.as_fd(),
                d.task,
                d.total,
                d.first,
                &d.fds,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::ETOOMANYREFS as i32) => {
                    self.refused = true;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    // The worker is gone (it died before `drain` read its
                    // end's close, which it still will, after any
                    // datagram the worker sent before): as above, its
                    // exit fails its tasks, naming the worker and the
                    // signal, rather than this send.
                    self.unsent.clear();
                    return Ok(());
                }
                Err(e) => {
                    self.unsent.clear();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Receives every datagram waiting.
    pub(crate) fn drain(&mut self) {
        while !self.closed {
            match recv(self.fd.as_fd()) {
                Ok(Recv::Batch(b)) => self.pending.push_back(b),
                Ok(Recv::Empty) => return,
                // Closed, or unusable: a result that needed descriptors
                // says they are missing.
                Ok(Recv::Closed) | Err(_) => self.closed = true,
            }
        }
    }

    /// The descriptors that came with the result of task `task`, in order
    /// (none if it holds no buffer); those of earlier tasks still here are
    /// closed.
    pub(crate) fn take(&mut self, task: u64) -> Result<VecDeque<PoolFd>, Error> {
        self.drain();
        let mut fds = VecDeque::new();
        let mut cut = false;
        let mut total = 0;
        while let Some(b) = self.pending.front() {
            if b.task > task {
                break;
            }
            let b = self.pending.pop_front().expect("front");
            if b.task == task {
                cut |= b.truncated;
                total = b.total as usize;
                fds.extend(b.fds);
            }
        }
        if cut {
            return Err(truncated_error(task, fds.len(), "parent"));
        }
        if fds.len() < total {
            return Err(Error::Broken {
                reason: format!(
                    "the result of task {task} came with {} of its {total} buffer descriptors",
                    fds.len()
                ),
            });
        }
        Ok(fds)
    }
}

// ---------------------------------------------------------------------------
// The worker's end.

/// A worker's end and what it has read ahead.
struct WorkerSide {
    sock: OwnedFd,
    /// The task being run.
    task: Option<u64>,
    /// Its descriptors received and not yet taken.
    queue: VecDeque<PoolFd>,
    /// Its descriptor count, once its first datagram arrived, and how
    /// many of them arrived.
    total: Option<u32>,
    received: u32,
    /// Datagrams of later tasks, read while looking for this one's.
    later: VecDeque<Batch>,
    /// Descriptors of the buffers in its results, to send after it.
    outgoing: Vec<Outgoing>,
}

thread_local! {
    /// The worker's side channel (set once, in the worker's only thread;
    /// leaked: the process ends with `_exit`). A `const` cell of a
    /// reference, without drop glue: no thread-local destructor.
    static WORKER: Cell<Option<&'static RefCell<WorkerSide>>> = const { Cell::new(None) };
    /// The last task sent descriptors (see [`worker_sent`]).
    static SENT: Cell<bool> = const { Cell::new(false) };
}

/// Whether the task just run sent its results' descriptors (then its
/// result frame should follow at once); resets it.
pub(crate) fn worker_sent() -> bool {
    SENT.replace(false)
}

/// Installs a worker's end of its side channel.
pub(crate) fn worker_init(sock: OwnedFd) {
    let side = Box::leak(Box::new(RefCell::new(WorkerSide {
        sock,
        task: None,
        queue: VecDeque::new(),
        total: None,
        received: 0,
        later: VecDeque::new(),
        outgoing: Vec::new(),
    })));
    WORKER.set(Some(side));
}

/// Runs task `task` (`run`), with its buffers' descriptors received on
/// demand (`carries_fds`: its frame is marked [`FDS`](crate::frame::FDS);
/// unmarked, it has none, and a decode that asks for one fails at once
/// instead of waiting), then sends those of its results; says whether it
/// sent any (the result frame is then marked `FDS`). `Err` when the parent
/// is gone.
pub(crate) fn worker_task<R>(
    task: u64,
    carries_fds: bool,
    run: impl FnOnce() -> R,
) -> io::Result<(R, bool)> {
    let Some(side) = WORKER.get() else {
        return Ok((run(), false));
    };
    {
        let mut s = side.borrow_mut();
        s.task = Some(task);
        s.total = (!carries_fds).then_some(0);
        s.received = 0;
    }
    let mut incoming = crate::buffer::Incoming::Worker;
    let r = crate::buffer::decoding(&mut incoming, run);
    let mut s = side.borrow_mut();
    let s = &mut *s;
    s.task = None;
    s.queue.clear();
    // What this task did not take of its own descriptors goes now (those
    // not yet read are closed by the next task that looks for its own).
    if let Some(total) = s.total {
        while s.received < total {
            match recv(s.sock.as_fd()) {
                Ok(Recv::Batch(b)) if b.task == task => s.received += b.fds.len() as u32,
                Ok(Recv::Batch(b)) if b.task > task => {
                    s.later.push_back(b);
                    break;
                }
                Ok(Recv::Batch(_)) => {}
                _ => break,
            }
        }
    }
    let out = std::mem::take(&mut s.outgoing);
    if !out.is_empty() {
        send(s.sock.as_fd(), task, &out)?;
        SENT.set(true);
    }
    Ok((r, !out.is_empty()))
}

/// Adds the descriptors of a task's result buffers, to be sent after it.
pub(crate) fn worker_outgoing(fds: &mut Vec<Outgoing>) {
    if let Some(side) = WORKER.get() {
        side.borrow_mut().outgoing.append(fds);
    }
}

/// The next descriptor of the task being decoded.
pub(crate) fn worker_next_fd() -> Result<OwnedFd, String> {
    let Some(side) = WORKER.get() else {
        return Err("a buffer sent out of band is being decoded outside a worker".into());
    };
    let mut s = side.borrow_mut();
    let task = s
        .task
        .ok_or("a buffer sent out of band is being decoded outside a task")?;
    loop {
        if let Some(fd) = s.queue.pop_front() {
            return Ok(fd.into_owned());
        }
        if s.total.is_some_and(|t| s.received >= t) {
            return Err(format!(
                "task {task} came with {} buffer descriptors and its arguments name more",
                s.received
            ));
        }
        let missing = || {
            format!(
                "the descriptor of a buffer of task {task} did not arrive (the parent sent \
                 those of a later task first, or could not send them)"
            )
        };
        let batch = if s.later.front().is_some_and(|b| b.task == task) {
            s.later.pop_front().expect("front")
        } else {
            match recv(s.sock.as_fd()) {
                Ok(Recv::Batch(b)) => b,
                // Not sent yet: the parent was ahead of this worker and its
                // socket filled; it sends the rest as the socket drains.
                // Wait for it, or for the parent's end to close.
                Ok(Recv::Empty) => {
                    wait_readable(s.sock.as_fd())
                        .map_err(|e| format!("waiting for the buffers of task {task}: {e}"))?;
                    continue;
                }
                Ok(Recv::Closed) => {
                    return Err(format!(
                        "the descriptor of a buffer of task {task} did not arrive (the \
                         parent's end of the channel closed)"
                    ));
                }
                Err(e) => return Err(format!("receiving the buffers of task {task}: {e}")),
            }
        };
        if batch.task < task {
            continue; // an earlier task's, left unread: closed
        }
        if batch.task > task {
            s.later.push_back(batch);
            return Err(missing());
        }
        if batch.truncated {
            return Err(truncated_error(task, batch.fds.len(), "worker").to_string());
        }
        s.total = Some(batch.total);
        s.received += batch.fds.len() as u32;
        s.queue.extend(batch.fds);
    }
}

/// Waits until `sock` is readable or its peer closed (no deadline: the
/// parent sends what it queued as the socket drains, and its death closes
/// the socket).
fn wait_readable(sock: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
