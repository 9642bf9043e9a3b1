//! Wire frames between the parent and a worker.
//!
//! Every frame is an 8-byte little-endian body length followed by the body.
//! The body starts with a one-byte kind and a fixed little-endian header,
//! then a postcard payload:
//!
//! | kind          | direction        | header                               | payload                       |
//! |---------------|------------------|--------------------------------------|-------------------------------|
//! | `TASK`        | parent -> worker | task id, trampoline, function (u64s) | item count, then the items    |
//! | `READY`       | worker -> parent | -                                    | -                             |
//! | `INIT_FAILED` | worker -> parent | -                                    | the message, UTF-8            |
//! | `RESULT`      | worker -> parent | task id, busy nanoseconds (u64s)     | one outcome per item          |
//!
//! Payloads larger than the pipe buffer (64 KiB) are normal: the reader
//! assembles a frame from as many reads as it takes, growing its buffer as
//! bytes arrive (a corrupt length cannot make it allocate a terabyte up
//! front), and reports a frame cut short with the byte counts.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes of the length prefix.
pub(crate) const LEN_PREFIX: usize = 8;
/// Largest body accepted: a sanity bound against a corrupt length.
pub(crate) const MAX_BODY: u64 = 1 << 40;

/// Frame kinds.
pub(crate) const TASK: u8 = 1;
pub(crate) const READY: u8 = 2;
pub(crate) const INIT_FAILED: u8 = 3;
pub(crate) const RESULT: u8 = 4;

/// Body bytes before a task's payload: kind, id, trampoline, function.
pub(crate) const TASK_HEADER: usize = 1 + 8 + 8 + 8;
/// Body bytes before a result's payload: kind, id, busy nanoseconds.
pub(crate) const RESULT_HEADER: usize = 1 + 8 + 8;

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

/// Builds one frame in a `Vec`: the length is patched in by [`finish`](Self::finish).
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// Starts a frame of `kind` with the given fixed header fields.
    pub(crate) fn new(kind: u8, fields: &[u64]) -> Self {
        let mut buf = Vec::with_capacity(LEN_PREFIX + 1 + 8 * fields.len() + 16);
        Self::begin(&mut buf, kind, fields);
        FrameBuilder { buf }
    }

    /// Appends the start of a frame to `out`, returning where it starts;
    /// pass that to [`patch_len`] when the payload is written.
    pub(crate) fn begin(out: &mut Vec<u8>, kind: u8, fields: &[u64]) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        out.push(kind);
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes());
        }
        start
    }

    /// The buffer, to append the payload to.
    pub(crate) fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Patches the length in and returns the whole frame.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        patch_len(&mut self.buf, 0);
        self.buf
    }
}

/// Writes the body length of the frame starting at `start` in `out`.
pub(crate) fn patch_len(out: &mut [u8], start: usize) {
    let body = (out.len() - start - LEN_PREFIX) as u64;
    out[start..start + LEN_PREFIX].copy_from_slice(&body.to_le_bytes());
}

/// Reads the `n`th u64 header field of a body (after the kind byte).
pub(crate) fn field(body: &[u8], n: usize) -> u64 {
    let at = 1 + 8 * n;
    u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
}

/// Overwrites the `n`th u64 header field of a whole frame (prefix included).
pub(crate) fn set_field(frame: &mut [u8], n: usize, value: u64) {
    let at = LEN_PREFIX + 1 + 8 * n;
    frame[at..at + 8].copy_from_slice(&value.to_le_bytes());
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
        let mut b = FrameBuilder::new(kind, &[7, 8]);
        b.payload().extend_from_slice(payload);
        b.finish()
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
