//! Wire frames between the parent and a worker.
//!
//! Every frame is an 8-byte little-endian body length followed by the body.
//! The body starts with a one-byte kind and a fixed little-endian header,
//! then a payload in the pool's wire format ([`crate::codec`]):
//!
//! | kind          | direction        | header                               | payload                       |
//! |---------------|------------------|--------------------------------------|-------------------------------|
//! | `TASK`        | parent -> worker | task id, trampoline, function (u64s) | item count, then the items    |
//! | `READY`       | worker -> parent | -                                    | -                             |
//! | `INIT_FAILED` | worker -> parent | -                                    | the message, UTF-8            |
//! | `RESULT`      | worker -> parent | task id, busy nanoseconds (u64s)     | one outcome per item          |
//!
//! This module alone knows the layout: task frames are written through
//! [`TaskHeader`] and read with [`TaskHeader::parse`]; result frames are
//! written with [`ResultFrame::begin`] and read as [`FromWorker`]. Nobody
//! else slices a header or patches a field.
//!
//! Payloads larger than the pipe buffer (64 KiB) are normal: the reader
//! assembles a frame from as many reads as it takes, growing its buffer as
//! bytes arrive (a corrupt length cannot make it allocate a terabyte up
//! front), and reports a frame cut short with the byte counts.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::Error;
use crate::fds::PoolFd;

/// Bytes of the length prefix.
pub(crate) const LEN_PREFIX: usize = 8;
/// Largest body accepted: a sanity bound against a corrupt length.
pub(crate) const MAX_BODY: u64 = 1 << 40;

/// Frame kinds: the first byte of every body.
pub(crate) const TASK: u8 = 1;
pub(crate) const READY: u8 = 2;
pub(crate) const INIT_FAILED: u8 = 3;
pub(crate) const RESULT: u8 = 4;

/// The kernel's default pipe capacity.
pub(crate) const PIPE_DEFAULT: usize = 64 * 1024;
/// The capacity a pipe gets once a frame larger than the default travels on
/// it: a 64 KiB pipe wakes the reader every 64 KiB (measured here: 4 x 256
/// MiB through a raw pipe, 1.16 s with 64 KiB, 0.38 s with 1 MiB). Pipes that
/// only ever carry small frames keep the default, so a pool of small tasks
/// does not eat into the per-user pipe budget (`pipe-user-pages-soft`).
pub(crate) const PIPE_BIG: usize = 1 << 20;

/// Gives the pipe behind `fd` a capacity of [`PIPE_BIG`]; best effort (an
/// unprivileged user past its pipe budget keeps the default, which is only
/// slower).
pub(crate) fn enlarge_pipe(fd: BorrowedFd<'_>) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BIG as i32));
}

/// Size of the reader's buffer; frames up to this size are parsed in place.
const READ_BUF: usize = 64 * 1024;
/// Largest step by which a big frame's buffer grows ahead of the data.
const GROW_STEP: usize = 16 << 20;

/// Starts a frame in `out`: a length prefix to patch, the kind and the
/// header fields. Returns where the frame starts, for [`patch_len`].
fn begin(out: &mut Vec<u8>, kind: u8, fields: &[u64]) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(kind);
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    start
}

/// Writes the body length of the frame starting at `start` in `out`.
fn patch_len(out: &mut [u8], start: usize) {
    let body = (out.len() - start - LEN_PREFIX) as u64;
    out[start..start + LEN_PREFIX].copy_from_slice(&body.to_le_bytes());
}

/// Reads the `n`th u64 header field of a body (after the kind byte); the
/// caller checked the length.
fn field(body: &[u8], n: usize) -> u64 {
    let at = 1 + 8 * n;
    u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed header of a task frame: which task, and the two addresses
/// that run it (see [`crate::task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskHeader {
    /// The scheduler's id of the task, echoed in its result.
    pub(crate) id: u64,
    /// Address of the trampoline monomorphised for the task's types.
    pub(crate) tramp: u64,
    /// Address of the user's function.
    pub(crate) func: u64,
}

impl TaskHeader {
    /// Body bytes before the payload: kind, id, trampoline, function.
    const BODY_LEN: usize = 1 + 3 * 8;

    /// Starts a task frame in `out`; append the payload, then call
    /// [`Started::finish`].
    pub(crate) fn begin(&self, out: &mut Vec<u8>) -> Started {
        Started(begin(out, TASK, &[self.id, self.tramp, self.func]))
    }

    /// Splits a task frame's body into its header and payload; `None` if it
    /// is not a task frame.
    pub(crate) fn parse(body: &[u8]) -> Option<(TaskHeader, &[u8])> {
        if body.len() < Self::BODY_LEN || body[0] != TASK {
            return None;
        }
        let h = TaskHeader {
            id: field(body, 0),
            tramp: field(body, 1),
            func: field(body, 2),
        };
        Some((h, &body[Self::BODY_LEN..]))
    }

    /// Where a task body's payload starts (after [`parse`](Self::parse)
    /// accepted it).
    pub(crate) const PAYLOAD_AT: usize = Self::BODY_LEN;
}

/// A frame being written into a buffer: where it starts.
#[must_use = "a started frame has no length until `finish`"]
pub(crate) struct Started(usize);

impl Started {
    /// Patches the length of the frame (everything appended since it
    /// started).
    pub(crate) fn finish(self, out: &mut [u8]) {
        patch_len(out, self.0);
    }
}

/// A started result frame, whose busy time is known only at the end.
#[must_use = "a started frame has no length until `finish`"]
pub(crate) struct StartedResult(usize);

impl StartedResult {
    /// Writes the busy time and the length of the frame.
    pub(crate) fn finish(self, out: &mut [u8], busy_ns: u64) {
        let at = self.0 + LEN_PREFIX + 1 + 8;
        out[at..at + 8].copy_from_slice(&busy_ns.to_le_bytes());
        patch_len(out, self.0);
    }
}

/// A worker's answer to one task: its id, how long the worker was busy
/// with it, and the outcomes (one per item, see [`crate::task`]).
#[derive(Debug)]
pub(crate) struct ResultFrame {
    /// The task this answers.
    pub(crate) id: u64,
    /// Nanoseconds the worker spent on the task (decode, run, encode).
    pub(crate) busy_ns: u64,
    body: Vec<u8>,
    /// The descriptors of the buffers in the outcomes, in order (from the
    /// worker's side channel, [`crate::side`]), or why they are missing.
    pub(crate) fds: Result<VecDeque<PoolFd>, Error>,
}

impl ResultFrame {
    /// Body bytes before the payload: kind, id, busy nanoseconds.
    const BODY_LEN: usize = 1 + 2 * 8;

    /// Starts the result frame of task `id` in `out`; append the outcomes,
    /// then call [`StartedResult::finish`] with the busy time.
    pub(crate) fn begin(out: &mut Vec<u8>, id: u64) -> StartedResult {
        StartedResult(begin(out, RESULT, &[id, 0]))
    }

    /// The outcomes, one per item.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.body[Self::BODY_LEN..]
    }

    /// The task id of a result frame still arriving, once its header bytes
    /// are in (`body` is what has arrived of the body).
    pub(crate) fn peek_id(body: &[u8]) -> Option<u64> {
        (body.first() == Some(&RESULT) && body.len() > 8).then(|| field(body, 0))
    }
}

/// A frame from a worker, by kind.
#[derive(Debug)]
pub(crate) enum FromWorker {
    /// The initializer succeeded; tasks may come.
    Ready,
    /// The initializer failed, with this message; the worker exits.
    InitFailed(String),
    /// A task's result.
    Result(ResultFrame),
}

impl FromWorker {
    /// Parses a body read from a result pipe; the error says what is wrong
    /// with it.
    pub(crate) fn parse(body: Vec<u8>) -> Result<FromWorker, String> {
        match body.first() {
            Some(&READY) if body.len() == 1 => Ok(FromWorker::Ready),
            Some(&INIT_FAILED) => Ok(FromWorker::InitFailed(
                String::from_utf8_lossy(&body[1..]).into_owned(),
            )),
            Some(&RESULT) if body.len() >= ResultFrame::BODY_LEN => {
                Ok(FromWorker::Result(ResultFrame {
                    id: field(&body, 0),
                    busy_ns: field(&body, 1),
                    body,
                    fds: Ok(VecDeque::new()),
                }))
            }
            Some(&RESULT) => Err(format!(
                "a {}-byte result frame is shorter than its {}-byte header",
                body.len(),
                ResultFrame::BODY_LEN
            )),
            Some(&kind) => Err(format!(
                "unexpected frame of kind {kind} ({} bytes)",
                body.len()
            )),
            None => Err("an empty frame".to_string()),
        }
    }

    /// The whole frame a worker sends after its initializer: READY, or
    /// INIT_FAILED with `message`.
    pub(crate) fn hello(message: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        let start = match message {
            None => begin(&mut out, READY, &[]),
            Some(m) => {
                let s = begin(&mut out, INIT_FAILED, &[]);
                out.extend_from_slice(m.as_bytes());
                s
            }
        };
        patch_len(&mut out, start);
        out
    }

    /// Whether a frame still arriving is of a kind a worker may send now
    /// (`ready`: it already sent READY).
    pub(crate) fn pending_kind_ok(body: &[u8], ready: bool) -> Result<(), String> {
        match body.first() {
            None | Some(&RESULT) => Ok(()),
            Some(&(READY | INIT_FAILED)) if !ready => Ok(()),
            Some(&kind) => Err(format!("unexpected frame of kind {kind} (incomplete)")),
        }
    }
}

/// A frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame length {len} is out of range (1 to {max} bytes): the stream is corrupt")]
    BadLength { len: u64, max: u64 },
    #[error("frame cut short: the pipe closed after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("could not allocate {len} bytes for a frame: out of memory")]
    OutOfMemory { len: u64 },
}

/// What one [`FrameReader::fill`] call saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Bytes arrived and filled the buffer: more may be waiting.
    More,
    /// Bytes arrived, fewer than there was room for: the pipe is drained.
    Drained,
    /// Nothing to read now (non-blocking descriptor).
    WouldBlock,
    /// The writer closed the pipe.
    Eof,
}

/// Assembles frames from a byte stream, one `read` at a time.
pub(crate) struct FrameReader {
    /// Bytes read but not yet parsed are `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    /// A frame too big for `buf`, being filled directly.
    big: Option<Big>,
}

struct Big {
    body: Vec<u8>,
    want: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buf: Vec::with_capacity(READ_BUF),
            pos: 0,
            big: None,
        }
    }
}

impl FrameReader {
    /// Reads once from `fd` (retrying on `EINTR`).
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>) -> Result<Fill, FillError> {
        let limit = match &self.big {
            Some(big) => big.want - big.body.len(),
            None => usize::MAX,
        };
        let target: &mut Vec<u8> = match &mut self.big {
            Some(big) => {
                let missing = big.want - big.body.len();
                if big.body.capacity() == big.body.len() {
                    // Grow geometrically (at least GROW_STEP), never past the frame.
                    let step = big.body.len().max(GROW_STEP).min(missing);
                    big.body.try_reserve_exact(step).map_err(|_| {
                        FillError::Frame(FrameError::OutOfMemory {
                            len: big.want as u64,
                        })
                    })?;
                }
                &mut big.body
            }
            None => {
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                } else if self.buf.len() == self.buf.capacity() {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                &mut self.buf
            }
        };
        let room = target.spare_capacity_mut().len().min(limit);
        let n = read_spare(fd, target, limit).map_err(FillError::Io)?;
        Ok(match n {
            Some(0) => Fill::Eof,
            Some(n) if n == room => Fill::More,
            Some(_) => Fill::Drained,
            None => Fill::WouldBlock,
        })
    }

    /// Parses the next complete frame's body, if one is buffered.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(big) = &self.big {
            if big.body.len() == big.want {
                return Ok(self.big.take().map(|b| b.body));
            }
            return Ok(None);
        }
        let avail = &self.buf[self.pos..];
        if avail.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u64::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("8 bytes"));
        if len == 0 || len > MAX_BODY {
            return Err(FrameError::BadLength { len, max: MAX_BODY });
        }
        let len = len as usize;
        let have = avail.len() - LEN_PREFIX;
        if have >= len {
            let body = avail[LEN_PREFIX..LEN_PREFIX + len].to_vec();
            self.pos += LEN_PREFIX + len;
            return Ok(Some(body));
        }
        if LEN_PREFIX + len > READ_BUF {
            // Too big for the buffer: move what we have into its own vector
            // and read the rest straight into it.
            let mut body = Vec::new();
            body.try_reserve_exact(len.min(have + GROW_STEP))
                .map_err(|_| FrameError::OutOfMemory { len: len as u64 })?;
            body.extend_from_slice(&avail[LEN_PREFIX..]);
            self.pos = self.buf.len();
            self.big = Some(Big { body, want: len });
        }
        Ok(None)
    }

    /// The first bytes of the body of the frame being assembled, if it is
    /// not complete yet: lets the caller check its header without waiting
    /// for the whole body (a worker whose stream went wrong may never send
    /// the rest).
    pub(crate) fn pending_body(&self) -> &[u8] {
        if let Some(big) = &self.big {
            return &big.body;
        }
        let avail = &self.buf[self.pos..];
        if avail.len() > LEN_PREFIX {
            &avail[LEN_PREFIX..]
        } else {
            &[]
        }
    }

    /// The whole length (prefix included) of the frame being assembled, if
    /// its length prefix has arrived but not all of it.
    pub(crate) fn pending_len(&self) -> Option<usize> {
        if let Some(big) = &self.big {
            return Some(LEN_PREFIX + big.want);
        }
        let avail = &self.buf[self.pos..];
        (avail.len() >= LEN_PREFIX).then(|| {
            let len = u64::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("8 bytes"));
            (len as usize).saturating_add(LEN_PREFIX)
        })
    }

    /// Whether a partial frame is buffered (so EOF now means truncation).
    pub(crate) fn partial(&self) -> Option<FrameError> {
        if let Some(big) = &self.big {
            return Some(FrameError::Truncated {
                expected: (LEN_PREFIX + big.want) as u64,
                got: (LEN_PREFIX + big.body.len()) as u64,
            });
        }
        let avail = &self.buf[self.pos..];
        if avail.is_empty() {
            return None;
        }
        let expected = if avail.len() >= LEN_PREFIX {
            u64::from_le_bytes(avail[..LEN_PREFIX].try_into().expect("8 bytes"))
                .saturating_add(LEN_PREFIX as u64)
        } else {
            LEN_PREFIX as u64
        };
        Some(FrameError::Truncated {
            expected,
            got: avail.len() as u64,
        })
    }
}

/// Why [`FrameReader::fill`] failed.
#[derive(Debug)]
pub(crate) enum FillError {
    Io(io::Error),
    Frame(FrameError),
}

/// Reads into the spare capacity of `buf` (at most `limit` bytes), returning
/// `None` for `EAGAIN`.
fn read_spare(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, limit: usize) -> io::Result<Option<usize>> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(limit);
    debug_assert!(want > 0);
    loop {
        // SAFETY: `spare` is writable memory of at least `want` bytes owned by
        // `buf`; read(2) writes at most `want` bytes into it and returns how
        // many it wrote, which we then mark initialized.
        let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: read(2) initialized the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(Some(n));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Frames waiting to be written to a non-blocking pipe.
#[derive(Default)]
pub(crate) struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already written.
    sent: usize,
}

impl OutQueue {
    pub(crate) fn push(&mut self, frame: Vec<u8>) {
        self.frames.push_back(frame);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as the pipe takes without blocking. `Ok(true)` when
    /// everything was written.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.frames.len().min(64));
            for (i, f) in self.frames.iter().take(64).enumerate() {
                let from = if i == 0 { self.sent } else { 0 };
                slices.push(IoSlice::new(&f[from..]));
            }
            let mut n = match nix::sys::uio::writev(fd, &slices) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            while n > 0 {
                let left = self.frames[0].len() - self.sent;
                if n >= left {
                    n -= left;
                    self.frames.pop_front();
                    self.sent = 0;
                } else {
                    self.sent += n;
                    n = 0;
                }
            }
        }
        Ok(true)
    }
}

/// Writes all of `buf` to a blocking descriptor (retrying on `EINTR`).
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap()
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin(&mut out, kind, &[7, 8]);
        out.extend_from_slice(payload);
        patch_len(&mut out, start);
        out
    }

    /// Reads every frame `fd` delivers until EOF.
    fn read_all(r: &OwnedFd) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        loop {
            while let Some(body) = reader.next_frame().unwrap() {
                out.push(body);
            }
            match reader.fill(r.as_fd()) {
                Ok(Fill::More | Fill::Drained) => {}
                Ok(Fill::WouldBlock) => unreachable!("the writer closed first"),
                Ok(Fill::Eof) => return (out, reader.partial()),
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn task_and_result_frames_round_trip_through_their_types() {
        let h = TaskHeader {
            id: 41,
            tramp: 0xdead,
            func: 0xbeef,
        };
        let mut out = vec![9, 9]; // a frame may start mid-buffer
        let started = h.begin(&mut out);
        out.extend_from_slice(b"items");
        started.finish(&mut out);
        let body = &out[2 + LEN_PREFIX..];
        assert_eq!(
            u64::from_le_bytes(out[2..2 + LEN_PREFIX].try_into().unwrap()) as usize,
            body.len()
        );
        let (parsed, payload) = TaskHeader::parse(body).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(payload, b"items");
        assert_eq!(&body[TaskHeader::PAYLOAD_AT..], b"items");
        assert!(TaskHeader::parse(&body[..10]).is_none());

        let mut out = Vec::new();
        let started = ResultFrame::begin(&mut out, 41);
        out.extend_from_slice(b"outcomes");
        started.finish(&mut out, 1234);
        let body = out[LEN_PREFIX..].to_vec();
        assert_eq!(ResultFrame::peek_id(&body[..9]), Some(41));
        assert_eq!(ResultFrame::peek_id(&body[..8]), None);
        match FromWorker::parse(body).unwrap() {
            FromWorker::Result(r) => {
                assert_eq!((r.id, r.busy_ns), (41, 1234));
                assert_eq!(r.payload(), b"outcomes");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_frames_that_are_wrong_say_how() {
        assert!(matches!(
            FromWorker::parse(FromWorker::hello(None)[LEN_PREFIX..].to_vec()),
            Ok(FromWorker::Ready)
        ));
        match FromWorker::parse(FromWorker::hello(Some("no db"))[LEN_PREFIX..].to_vec()) {
            Ok(FromWorker::InitFailed(m)) => assert_eq!(m, "no db"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            FromWorker::parse(vec![RESULT, 1, 2]).unwrap_err(),
            "a 3-byte result frame is shorter than its 17-byte header"
        );
        assert_eq!(
            FromWorker::parse(vec![99, 0, 0]).unwrap_err(),
            "unexpected frame of kind 99 (3 bytes)"
        );
        assert!(FromWorker::pending_kind_ok(&[READY], true).is_err());
        assert!(FromWorker::pending_kind_ok(&[READY], false).is_ok());
        assert!(FromWorker::pending_kind_ok(&[RESULT, 1], true).is_ok());
    }

    #[test]
    fn small_frames_round_trip() {
        let (r, w) = pipe();
        let mut q = OutQueue::default();
        for i in 0..100u8 {
            q.push(frame(RESULT, &[i; 3]));
        }
        assert!(q.flush(w.as_fd()).unwrap());
        drop(w);
        let (frames, partial) = read_all(&r);
        assert_eq!(frames.len(), 100);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f[0], RESULT);
            assert_eq!(field(f, 0), 7);
            assert_eq!(field(f, 1), 8);
            assert_eq!(&f[17..], &[i as u8; 3]);
        }
        assert_eq!(partial, None);
    }

    #[test]
    fn frame_larger_than_the_pipe_streams() {
        let (r, w) = pipe();
        let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let f = frame(TASK, &payload);
        let writer = std::thread::spawn(move || {
            let mut q = OutQueue::default();
            q.push(f);
            while !q.flush(w.as_fd()).unwrap() {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        });
        let mut reader = FrameReader::default();
        let body = loop {
            if let Some(b) = reader.next_frame().unwrap() {
                break b;
            }
            match reader.fill(r.as_fd()).unwrap() {
                Fill::Eof => panic!("early eof"),
                _ => std::thread::sleep(std::time::Duration::from_micros(10)),
            }
        };
        writer.join().unwrap();
        assert_eq!(&body[17..], &payload[..]);
    }

    #[test]
    fn truncated_frame_is_reported_with_byte_counts() {
        let (r, w) = pipe();
        let f = frame(RESULT, &[1; 100]);
        write_all(w.as_fd(), &f[..50]).unwrap();
        drop(w);
        let (frames, partial) = read_all(&r);
        assert!(frames.is_empty());
        assert_eq!(
            partial,
            Some(FrameError::Truncated {
                expected: f.len() as u64,
                got: 50
            })
        );
    }

    #[test]
    fn truncated_big_frame_is_reported_with_byte_counts() {
        let (r, w) = pipe();
        let f = frame(RESULT, &vec![1; 200_000]);
        let part = f[..150_000].to_vec();
        let writer = std::thread::spawn(move || {
            let mut q = OutQueue::default();
            q.push(part);
            while !q.flush(w.as_fd()).unwrap() {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        });
        let mut reader = FrameReader::default();
        loop {
            assert_eq!(reader.next_frame().unwrap(), None);
            match reader.fill(r.as_fd()).unwrap() {
                Fill::Eof => break,
                _ => std::thread::sleep(std::time::Duration::from_micros(10)),
            }
        }
        writer.join().unwrap();
        assert_eq!(
            reader.partial(),
            Some(FrameError::Truncated {
                expected: f.len() as u64,
                got: 150_000
            })
        );
    }

    #[test]
    fn corrupt_lengths_are_errors_not_allocations() {
        for len in [0u64, MAX_BODY + 1, u64::MAX] {
            let (r, w) = pipe();
            write_all(w.as_fd(), &len.to_le_bytes()).unwrap();
            let mut reader = FrameReader::default();
            reader.fill(r.as_fd()).unwrap();
            assert_eq!(
                reader.next_frame(),
                Err(FrameError::BadLength { len, max: MAX_BODY })
            );
        }
    }

    #[test]
    fn huge_claimed_length_does_not_allocate_it_up_front() {
        // 512 GiB claimed, 1 byte sent: the reader must not try to reserve it all.
        let (r, w) = pipe();
        let mut bytes = (512u64 << 30).to_le_bytes().to_vec();
        bytes.push(RESULT);
        write_all(w.as_fd(), &bytes).unwrap();
        drop(w);
        let (frames, partial) = read_all(&r);
        assert!(frames.is_empty());
        assert_eq!(
            partial,
            Some(FrameError::Truncated {
                expected: (512 << 30) + LEN_PREFIX as u64,
                got: LEN_PREFIX as u64 + 1
            })
        );
    }
}
