//! Method 10 of the notes: anonymous pipes and named pipes (FIFOs), the
//! channels under all of this (the pool's tasks and results travel through
//! anonymous pipes).
//!
//! A producer (the parent) streams the rows of an array, one block per row,
//! to a consumer process: first through a named pipe made with `mkfifo` in
//! a temporary directory (any process that knows the path can open it; the
//! directory is removed at the end), then through an anonymous pipe (only
//! processes forked after `pipe()` hold its ends). Each consumer checksums
//! every block it reads and leaves the checksums in a small shared array;
//! the parent compares them with the checksums of what it sent, and prints
//! the throughput of each channel.
//!
//! Nothing waits forever: the consumers are forked before the data exists
//! and read with `poll`, leaving if the producer dies; the producer opens
//! and writes without blocking, gives up after `--timeout` without
//! progress, and learns at once (`EPIPE`) if a consumer dies, naming how it
//! ended.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use forkpool_shm::{Pid, SharedArray};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, getppid, mkdtemp, mkfifo, pipe2, read, write};

use crate::common::{self, bytes, fact};

/// Options of the `fifo` demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array: one block each through each pipe.
    #[arg(long, default_value_t = 256)]
    rows: usize,
    /// Columns of the array: doubles per block (131072 = 1 MiB).
    #[arg(long, default_value_t = 131_072)]
    cols: usize,
    /// Seed of the array's random rows (as in `random-fill`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Size of each pipe's kernel buffer in bytes (`F_SETPIPE_SZ`; default:
    /// the kernel's, 64 KiB). Larger buffers mean fewer wake-ups: try
    /// 1048576, the most an unprivileged process may ask for by default.
    #[arg(long)]
    pipe_buffer: Option<usize>,
    /// Seconds either side waits without progress before giving up.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// (For tests) the FIFO's consumer kills itself with SIGKILL after this
    /// many blocks: the producer must say so, not hang.
    #[arg(long, hide = true)]
    consumer_dies_after: Option<usize>,
}

/// The two channels, in the order they run.
const CHANNELS: [&str; 2] = ["named pipe (FIFO)", "anonymous pipe"];

// ANCHOR: checksum
/// A 64-bit checksum of a block's bytes, 8 at a time, order-sensitive (a
/// multiply-rotate hash, not a cryptographic one): a byte lost, added,
/// changed or moved changes it.
fn checksum(block: &[u8]) -> u64 {
    let mut words = block.chunks_exact(8);
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ block.len() as u64;
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3_0001).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3_0001);
    }
    h
}
// ANCHOR_END: checksum

/// Where a consumer leaves what it read: one row per channel of
/// `[bytes, blocks, checksum of block 0, checksum of block 1, ...]`.
struct Results {
    array: SharedArray<u64>,
}

impl Results {
    fn new(rows: usize) -> anyhow::Result<Self> {
        Ok(Results {
            array: SharedArray::new(&[CHANNELS.len(), rows + 2])?,
        })
    }
    fn base(&self, channel: usize) -> usize {
        channel * self.array.row_len()
    }
    fn bytes(&self, channel: usize) -> u64 {
        self.array.get(self.base(channel))
    }
    fn blocks(&self, channel: usize) -> u64 {
        self.array.get(self.base(channel) + 1)
    }
    fn checksum(&self, channel: usize, block: usize) -> u64 {
        self.array.get(self.base(channel) + 2 + block)
    }
}

/// How a consumer ends (its exit status), beyond 0 for success.
const BAD_READ: i32 = 10;
const TOO_MUCH: i32 = 11;
const PARTIAL: i32 = 12;
const ORPHANED: i32 = 13;
const BAD_OPEN: i32 = 14;

/// What a consumer's exit status means.
fn consumer_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, 0) => "finished".to_owned(),
        WaitStatus::Exited(_, BAD_READ) => "stopped: read() failed".to_owned(),
        WaitStatus::Exited(_, TOO_MUCH) => "stopped: more blocks came than sent".to_owned(),
        WaitStatus::Exited(_, PARTIAL) => "stopped: the stream ended inside a block".to_owned(),
        WaitStatus::Exited(_, ORPHANED) => "stopped: the producer died".to_owned(),
        WaitStatus::Exited(_, BAD_OPEN) => "stopped: it could not open the FIFO".to_owned(),
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
        other => format!("ended oddly ({other:?})"),
    }
}

// ANCHOR: consumer
/// The consumer, in a forked child: reads blocks of `buf.len()` bytes from
/// `fd` until end of file, checksums each into `results`, and returns the
/// exit status. Allocates nothing and takes no lock (a child of a process
/// that may have had threads).
fn consume(
    fd: &OwnedFd,
    buf: &mut [u8],
    channel: usize,
    results: &Results,
    die_after: Option<usize>,
) -> i32 {
    let producer = getppid();
    let (base, max_blocks) = (results.base(channel), results.array.row_len() - 2);
    let (mut filled, mut blocks, mut total) = (0usize, 0usize, 0u64);
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => {
                if getppid() != producer {
                    return ORPHANED; // nobody will ever write or read our results
                }
                continue;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return BAD_READ,
        }
        match read(fd, &mut buf[filled..]) {
            Ok(0) => break, // end of file: the producer closed its end
            Ok(n) => {
                filled += n;
                total += n as u64;
                if filled == buf.len() {
                    if blocks == max_blocks {
                        return TOO_MUCH;
                    }
                    results.array.set(base + 2 + blocks, checksum(buf));
                    blocks += 1;
                    filled = 0;
                    if die_after == Some(blocks) {
                        let _ = nix::sys::signal::raise(Signal::SIGKILL);
                    }
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => return BAD_READ,
        }
    }
    results.array.set(base, total);
    results.array.set(base + 1, blocks as u64);
    if filled != 0 { PARTIAL } else { 0 }
}
// ANCHOR_END: consumer

/// Forks a consumer that closes `foreign` (the parent's write end of its
/// pipe, which would otherwise keep end of file from ever coming), runs
/// `open_end` for its end of the channel, then `consume`; returns its pid.
fn fork_consumer(
    foreign: Option<BorrowedFd<'_>>,
    open_end: impl FnOnce() -> nix::Result<OwnedFd>,
    buf: &mut [u8],
    channel: usize,
    results: &Results,
    die_after: Option<usize>,
) -> anyhow::Result<Pid> {
    // SAFETY: the child only opens or uses a descriptor, reads, computes,
    // stores into shared memory with atomics and `_exit`s: it takes no
    // lock and allocates nothing that another thread of the parent could
    // have held (the buffer was allocated before the fork).
    match unsafe { fork() }.context("forking a consumer")? {
        ForkResult::Child => {
            if let Some(fd) = foreign {
                // The parent's `OwnedFd` is never dropped here (the child
                // ends in `_exit`), so this is the only close in this process.
                let _ = nix::unistd::close(fd.as_raw_fd());
            }
            let code = match open_end() {
                Ok(fd) => consume(&fd, buf, channel, results, die_after),
                Err(_) => BAD_OPEN,
            };
            // SAFETY: ends the child at once, without running the parent's
            // exit handlers or flushing its copy of the parent's buffers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// The consumers this process forked: killed and reaped if still there when
/// dropped (on an error path), so none outlives the demo or stays a zombie.
struct Consumers(Vec<(Pid, Option<WaitStatus>)>);

impl Consumers {
    /// How consumer `i` ended, if it has (reaping it without waiting).
    fn poll_status(&mut self, i: usize) -> anyhow::Result<Option<WaitStatus>> {
        let (pid, status) = &mut self.0[i];
        if status.is_none() {
            match waitpid(*pid, Some(WaitPidFlag::WNOHANG)).context("waiting for a consumer")? {
                WaitStatus::StillAlive => {}
                ended => *status = Some(ended),
            }
        }
        Ok(*status)
    }

    /// Waits at most `timeout` for consumer `i` to end.
    fn wait(&mut self, i: usize, timeout: Duration) -> anyhow::Result<WaitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.poll_status(i)? {
                return Ok(status);
            }
            ensure!(
                t0.elapsed() < timeout,
                "the consumer (pid {}) did not finish within {timeout:?} after the stream ended",
                self.0[i].0
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for (pid, status) in &self.0 {
            if status.is_none() {
                let _ = kill(*pid, Signal::SIGKILL);
                let _ = waitpid(*pid, None);
            }
        }
    }
}

/// A temporary directory, removed with what it holds when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ANCHOR: produce
/// Writes all of `data` to `fd` (non-blocking), in blocks of `block`
/// bytes. Waits for room with `poll`, checking on consumer `i` meanwhile;
/// fails at once if it died (`EPIPE`), or after `timeout` without progress.
/// Calls `halfway` once, when half the blocks are written.
fn produce(
    fd: &OwnedFd,
    data: &[u8],
    block: usize,
    consumers: &mut Consumers,
    i: usize,
    timeout: Duration,
    mut halfway: impl FnMut(&mut Consumers) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let nblocks = data.len() / block;
    let bar = common::progress(nblocks as u64, "stream blocks");
    for (b, chunk) in data.chunks(block).enumerate() {
        if b == nblocks / 2 {
            halfway(consumers)?;
        }
        let mut sent = 0;
        let mut idle = Instant::now();
        while sent < chunk.len() {
            match write(fd, &chunk[sent..]) {
                Ok(n) => {
                    sent += n;
                    idle = Instant::now();
                }
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EPIPE) => {
                    let how = consumers.wait(i, timeout)?;
                    anyhow::bail!(
                        "the consumer (pid {}) {}; the producer learned it at once, writing \
                         block {b} of {nblocks} (EPIPE: nobody reads the pipe any more)",
                        consumers.0[i].0,
                        consumer_status(how)
                    );
                }
                Err(e) => return Err(e).context("writing to the pipe"),
            }
            if let Some(how) = consumers.poll_status(i)? {
                anyhow::bail!(
                    "the consumer (pid {}) {}; the producer noticed writing block {b} of \
                     {nblocks}",
                    consumers.0[i].0,
                    consumer_status(how)
                );
            }
            ensure!(
                idle.elapsed() < timeout,
                "the consumer (pid {}) read nothing for {timeout:?}; giving up",
                consumers.0[i].0
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
// ANCHOR_END: produce

/// Opens the FIFO for writing once its consumer has opened it for reading
/// (`ENXIO` until then), without blocking: fails if the consumer died or
/// after `timeout`.
fn open_for_writing(
    path: &Path,
    consumers: &mut Consumers,
    i: usize,
    timeout: Duration,
) -> anyhow::Result<OwnedFd> {
    let t0 = Instant::now();
    loop {
        match open(
            path,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENXIO) => {} // no reader yet
            Err(e) => {
                return Err(e).with_context(|| format!("opening {} for writing", path.display()));
            }
        }
        if let Some(how) = consumers.poll_status(i)? {
            anyhow::bail!(
                "the consumer (pid {}) {} before opening the FIFO",
                consumers.0[i].0,
                consumer_status(how)
            );
        }
        ensure!(
            t0.elapsed() < timeout,
            "no reader opened {} within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (rows, cols) = (args.rows, args.cols);
    ensure!(
        rows > 0 && cols > 0 && args.timeout > 0 && args.pipe_buffer != Some(0),
        "need --rows, --cols, --timeout and --pipe-buffer of at least 1 (got {rows}, {cols}, {}, \
         {:?})",
        args.timeout,
        args.pipe_buffer
    );
    let timeout = Duration::from_secs(args.timeout);
    let size = common::array_bytes(rows, cols, 8)?;
    let block = cols * 8;
    common::ensure_memory(
        size + size / 8,
        &format!("the producer's array of {}", bytes(size)),
        "use fewer --rows or --cols",
    )?;
    common::heading(
        "fifo",
        "array blocks through a named pipe (mkfifo) and an anonymous pipe",
    );
    fact(
        "array",
        format!("{rows} x {cols} f64 = {}, one block per row", bytes(size)),
    );
    fact("block", bytes(block as u64));

    // ANCHOR: setup
    // The consumers are forked first, before the array exists: they hold a
    // block's buffer and nothing more.
    let results = Results::new(rows)?;
    let template = std::env::temp_dir().join("forkpool-fifo-XXXXXX");
    let dir = TempDir(mkdtemp(&template).context("making a temporary directory")?);
    let fifo = dir.0.join("blocks.fifo");
    mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR)
        .with_context(|| format!("mkfifo {}", fifo.display()))?;
    fact("FIFO", format!("{} (mkfifo, mode 600)", fifo.display()));
    let mut buf = vec![0u8; block];
    let mut consumers = Consumers(Vec::new());
    let path = fifo.clone();
    let open_fifo = move || {
        open(
            &path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let pid = fork_consumer(
        None,
        open_fifo,
        &mut buf,
        0,
        &results,
        args.consumer_dies_after,
    )?;
    consumers.0.push((pid, None));
    let (pipe_r, pipe_w) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).context("creating an anonymous pipe")?;
    let mut pipe_r = Some(pipe_r);
    let take_read_end = move || pipe_r.take().ok_or(Errno::EBADF);
    let pid = fork_consumer(
        Some(pipe_w.as_fd()),
        take_read_end,
        &mut buf,
        1,
        &results,
        None,
    )?;
    consumers.0.push((pid, None));
    // The parent's read end went with the closure: the consumer holds the
    // only one, and the parent the only write end.
    let mut pipe_w = Some(pipe_w);
    // ANCHOR_END: setup

    let bar = common::progress(rows as u64, "make the array");
    let ((data, expected), _) = common::phase("make the array", Some(size), || {
        let mut data = vec![0u8; rows * block];
        let mut expected = Vec::with_capacity(rows);
        let mut row = vec![0.0; cols];
        for (r, out) in data.chunks_mut(block).enumerate() {
            crate::random_fill::fill_row(args.seed, r as u64, &mut row);
            for (o, x) in out.chunks_exact_mut(8).zip(&row) {
                o.copy_from_slice(&x.to_le_bytes());
            }
            expected.push(checksum(out));
            bar.inc(1);
        }
        (data, expected)
    });
    bar.finish_and_clear();

    // ANCHOR: stream
    let mut table = None;
    for (i, name) in CHANNELS.iter().enumerate() {
        let t0 = Instant::now();
        let fd = match pipe_w.take() {
            Some(write_end) if i == 1 => write_end,
            other => {
                pipe_w = other;
                open_for_writing(&fifo, &mut consumers, 0, timeout)?
            }
        };
        if let Some(want) = args.pipe_buffer {
            let want = i32::try_from(want).unwrap_or(i32::MAX);
            fcntl(&fd, FcntlArg::F_SETPIPE_SZ(want)).with_context(|| {
                format!(
                    "setting the pipe buffer to {want} bytes (unprivileged processes may ask \
                     for at most /proc/sys/fs/pipe-max-size, usually 1048576)"
                )
            })?;
        }
        let buffer =
            fcntl(&fd, FcntlArg::F_GETPIPE_SZ).context("reading the pipe's buffer size")?;
        produce(&fd, &data, block, &mut consumers, i, timeout, |consumers| {
            if i == 0 {
                // Taken mid-stream, while both consumers live.
                let extra = [
                    (consumers.0[0].0, "consumer (FIFO)"),
                    (consumers.0[1].0, "consumer (pipe)"),
                ];
                table = Some(common::memory_table(
                    "memory while the consumer reads the stream",
                    None,
                    &extra,
                )?);
            }
            Ok(())
        })?;
        drop(fd); // end of file for the consumer
        let status = consumers.wait(i, timeout)?;
        let took = t0.elapsed();
        ensure!(
            status == WaitStatus::Exited(consumers.0[i].0, 0),
            "the {name} consumer (pid {}) {}",
            consumers.0[i].0,
            consumer_status(status)
        );
        fact(
            name,
            format!(
                "{} in {:.3} s   {}   (pipe buffer {})",
                bytes(size),
                took.as_secs_f64(),
                common::rate(size, took),
                bytes(buffer as u64)
            ),
        );
    }
    // ANCHOR_END: stream
    if args.pipe_buffer.is_none() {
        fact(
            "pipe buffers",
            "the kernel's default; a larger --pipe-buffer (up to 1048576) means fewer wake-ups",
        );
    }
    fact(
        "bytes copied",
        format!(
            "{} per channel, twice: write() into the kernel's buffer, read() out of it",
            bytes(size)
        ),
    );

    // ANCHOR: verify
    for (i, name) in CHANNELS.iter().enumerate() {
        ensure!(
            results.bytes(i) == size && results.blocks(i) == rows as u64,
            "the {name} consumer read {} bytes in {} blocks, not {size} in {rows}",
            results.bytes(i),
            results.blocks(i)
        );
        if let Some(b) = (0..rows).find(|&b| results.checksum(i, b) != expected[b]) {
            anyhow::bail!(
                "block {b} arrived through the {name} with checksum {:016x}, sent with {:016x}",
                results.checksum(i, b),
                expected[b]
            );
        }
    }
    let table = table.context("the memory table was not taken")?;
    let parent_rss = table.entries()[0].rss;
    let consumer_rss = table.entries()[1].rss;
    ensure!(
        parent_rss >= size,
        "the producer's RSS {} is less than the array it holds ({})",
        bytes(parent_rss),
        bytes(size)
    );
    // The consumer holds a block at a time, never the array.
    ensure!(
        consumer_rss < 2 * block as u64 + (32 << 20),
        "the consumer's RSS is {} though it holds one block of {}",
        bytes(consumer_rss),
        bytes(block as u64)
    );
    let is_fifo = std::fs::metadata(&fifo)?.file_type().is_fifo();
    ensure!(is_fifo, "{} is not a FIFO", fifo.display());
    let dir_path = dir.0.clone();
    drop(dir);
    ensure!(
        !dir_path.exists(),
        "the temporary directory {} was not removed",
        dir_path.display()
    );
    common::verified(format!(
        "{size} bytes in {rows} blocks through each of the FIFO and the anonymous pipe, \
         every block's checksum matching; consumers held a block, not the array; FIFO removed"
    ));
    // ANCHOR_END: verify
    Ok(())
}
