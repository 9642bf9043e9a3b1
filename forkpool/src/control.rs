//! The control channel between the parent and its zygote.
//!
//! A Unix `SOCK_SEQPACKET` socketpair: every message is one datagram holding
//! one postcard-encoded [`Request`] or [`Event`]. When the zygote forks a
//! worker, the parent's ends of the worker's two pipes travel with the
//! [`Event::Spawned`] message as `SCM_RIGHTS`, as in Python's forkserver.
//!
//! The parent asks for workers; the zygote forks them, reaps them and says
//! how each one ended. The parent shutting down its sending side
//! (`shutdown(SHUT_WR)`) tells the zygote to kill its workers and exit; the
//! zygote's end closing tells the parent the zygote is gone.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::error::ExitCause;
use crate::fds::{Adopter, PoolFd};

/// Parent to zygote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Fork a worker for this slot.
    Spawn { slot: u32 },
    /// Kill this worker (if it is still a live child of the zygote).
    Kill { pid: i32 },
}

/// Zygote to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A worker was forked; its task pipe's write end and its result pipe's
    /// read end come with this message, in that order.
    Spawned { slot: u32, pid: i32 },
    /// `fork` or `pipe` failed in the zygote.
    SpawnFailed { slot: u32, errno: i32 },
    /// A worker was reaped.
    Exited { pid: i32, cause: ExitCause },
}

/// Largest encoded message.
const MAX_MSG: usize = 64;

/// Sends one message with `fds` attached. Blocking; never raises SIGPIPE.
pub(crate) fn send<M: Serialize>(fd: BorrowedFd<'_>, msg: &M, fds: &[RawFd]) -> io::Result<()> {
    let mut buf = [0u8; MAX_MSG];
    let bytes = postcard::to_slice(msg, &mut buf).map_err(io::Error::other)?;
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    loop {
        match socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a receive call found.
pub(crate) enum Received<M> {
    Message(M, Vec<PoolFd>),
    WouldBlock,
    Eof,
}

/// Receives one message (blocking unless `nonblocking`), adopting any
/// descriptors that came with it as [`PoolFd`]s, under the registry lock.
pub(crate) fn recv<M: for<'de> Deserialize<'de>>(
    fd: BorrowedFd<'_>,
    nonblocking: bool,
) -> io::Result<Received<M>> {
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    PoolFd::receiving(|adopter| recv_locked(fd, flags, adopter))
}

fn recv_locked<M: for<'de> Deserialize<'de>>(
    fd: BorrowedFd<'_>,
    flags: MsgFlags,
    adopter: &mut Adopter<'_>,
) -> io::Result<Received<M>> {
    let mut buf = [0u8; MAX_MSG];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 2]);
    let (bytes, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg_space), flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                let cmsgs = msg.cmsgs().map_err(io::Error::from)?;
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        for r in raw {
                            // SAFETY: the kernel just installed `r` in our
                            // table for this message; nothing else owns it.
                            fds.push(adopter.adopt(unsafe { OwnedFd::from_raw_fd(r) }));
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Received::WouldBlock),
            Err(Errno::ECONNRESET) => return Ok(Received::Eof),
            Err(e) => return Err(e.into()),
        }
    };
    if bytes == 0 {
        return Ok(Received::Eof);
    }
    let msg = postcard::from_bytes(&buf[..bytes]).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad control message ({bytes} bytes): {e}"),
        )
    })?;
    Ok(Received::Message(msg, fds))
}
