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

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::ExitCause;
use crate::fds::{Adopter, PoolFd};

/// Parent to zygote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Fork a worker for this slot.
    Spawn { slot: u32 },
    /// Kill this worker (if it is still a live child of the zygote).
    Kill {
        #[serde(with = "raw_pid")]
        pid: Pid,
    },
}

/// Zygote to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A worker was forked; its task pipe's write end, its result pipe's
    /// read end and the parent's end of its side channel (for the
    /// descriptors of buffers, see [`crate::side`]) come with this
    /// message, in that order.
    Spawned {
        slot: u32,
        #[serde(with = "raw_pid")]
        pid: Pid,
    },
    /// `fork` or `pipe` failed in the zygote: which call, its errno, and
    /// the zygote's descriptor limit and count (for `EMFILE`).
    SpawnFailed {
        slot: u32,
        call: SpawnCall,
        errno: i32,
        limit: u64,
        open: u64,
    },
    /// A worker was reaped; `peak_rss` is its peak resident memory in
    /// bytes (`wait4`'s `ru_maxrss`).
    Exited {
        #[serde(with = "raw_pid")]
        pid: Pid,
        cause: ExitCause,
        peak_rss: u64,
    },
}

/// A [`Pid`] on the wire: its raw `i32` (nix's `Pid` is not serde).
mod raw_pid {
    use nix::unistd::Pid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(pid: &Pid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(pid.as_raw())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pid, D::Error> {
        i32::deserialize(d).map(Pid::from_raw)
    }
}

/// The call that failed when the zygote could not fork a worker.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum SpawnCall {
    Pipe2,
    Socketpair,
    Fork,
}

impl SpawnCall {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SpawnCall::Pipe2 => "pipe2",
            SpawnCall::Socketpair => "socketpair",
            SpawnCall::Fork => "fork",
        }
    }
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
///
/// Every descriptor that arrived is adopted, even when the kernel could not
/// install them all (`MSG_CTRUNC`: the process is at its descriptor
/// limit): the caller sees fewer than were sent and decides; none is left
/// open unowned.
pub(crate) fn recv<M: for<'de> Deserialize<'de>>(
    fd: BorrowedFd<'_>,
    nonblocking: bool,
) -> io::Result<Received<M>> {
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    PoolFd::receiving(|adopter| recv_locked(fd, flags, adopter))
}

/// One message received by [`recv_with_fds`].
pub(crate) struct Got {
    /// Bytes of the message (0: the peer closed its end).
    pub(crate) bytes: usize,
    /// The descriptors that arrived, adopted.
    pub(crate) fds: Vec<PoolFd>,
    /// The kernel cut the descriptors short (`MSG_CTRUNC`: no room in
    /// `cmsg`, or this process is at its descriptor limit).
    pub(crate) truncated: bool,
}

/// `recvmsg` of one message into `buf`, with room for `cmsg`'s worth of
/// control data; every descriptor that arrived is adopted through
/// `adopter`, even when the kernel could not install them all (`MSG_CTRUNC`,
/// reported in [`Got::truncated`]): none is left open unowned. `Ok(None)`:
/// `EAGAIN`. `ECONNRESET` reads as a closed peer (0 bytes).
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    flags: libc::c_int,
    buf: &mut [u8],
    cmsg: &mut [u64],
    adopter: &mut Adopter<'_>,
) -> io::Result<Option<Got>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(cmsg);
    // nix's `recvmsg` refuses to show the control data of a message with
    // MSG_CTRUNC, which would leave the descriptors that did arrive open
    // and unowned: hence the raw call and the walk below.
    let bytes = loop {
        // SAFETY: `hdr` points at `iov` (and `iov` at `buf`) and at `cmsg`,
        // all alive and sized as stated, for the duration of the call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut hdr, flags) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            Errno::ECONNRESET => break 0,
            e => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: `hdr` was filled by a successful `recvmsg` (or left as set
    // up, with no control data, on ECONNRESET); its control fields
    // describe the part of `cmsg` the kernel wrote.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !c.is_null() {
        // SAFETY: `c` points at a control header inside `cmsg` (so aligned
        // for `cmsghdr`, which is what CMSG_FIRSTHDR/NXTHDR guarantee).
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: as above; CMSG_DATA points just past the header.
            let data = unsafe { libc::CMSG_DATA(c) };
            let header = data as usize - c as usize;
            // `cmsg_len` is a `size_t` with glibc, a `u32` with musl.
            #[allow(clippy::unnecessary_cast)]
            let count = (len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the
                // header, inside `cmsg`; read unaligned to make no claim.
                let raw = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed `raw` in our table for
                // this message; nothing else owns it.
                fds.push(adopter.adopt(unsafe { OwnedFd::from_raw_fd(raw) }));
            }
        }
        // SAFETY: `c` is a header inside the control data `hdr` describes.
        c = unsafe { libc::CMSG_NXTHDR(&hdr, c) };
    }
    Ok(Some(Got {
        bytes,
        fds,
        truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

/// Room for the control data of one message: an `SCM_RIGHTS` header and
/// up to twelve descriptors (three are ever sent), as `u64`s for alignment.
type CmsgBuf = [u64; 8];

fn recv_locked<M: for<'de> Deserialize<'de>>(
    fd: BorrowedFd<'_>,
    flags: libc::c_int,
    adopter: &mut Adopter<'_>,
) -> io::Result<Received<M>> {
    let mut buf = [0u8; MAX_MSG];
    let mut cmsg: CmsgBuf = [0; 8];
    let Some(got) = recv_with_fds(fd, flags, &mut buf, &mut cmsg, adopter)? else {
        return Ok(Received::WouldBlock);
    };
    let (bytes, fds) = (got.bytes, got.fds);
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
