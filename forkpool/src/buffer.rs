//! [`Buffer<T>`]: a large array of plain numbers passed by value *out of
//! band*, as a sealed memory file, instead of through the pipes.
//!
//! Python's pickle protocol 5 sends large buffers out of band; this is the
//! pool's counterpart. A `Buffer<T>` lives in a `memfd` that is sealed
//! (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`) once it is
//! filled. When a buffer is part of a task's argument or result, the pool's
//! wire format writes only its length; its descriptor travels beside the
//! frame, over a per-worker Unix socket (`SCM_RIGHTS`), and the other side
//! maps the same pages read-only. Nothing is copied on the way, in either
//! direction: the cost of a 64 MiB value is the one copy that made the
//! buffer, not six.
//!
//! By-value semantics hold because the pages cannot change: the seals
//! forbid writing, growing and shrinking the file, so the sender, the
//! receiver and anyone else holding the descriptor see the same bytes
//! forever. The receiver checks the seals and the size before mapping, and
//! refuses a descriptor that is not sealed or too short with an error.
//!
//! Outside the pool (`serde_json`, `postcard`, ...), a `Buffer<T>`
//! serialises as a plain sequence of numbers and deserialises from one: it
//! is an ordinary serde type everywhere, and travels out of band only where
//! the pool's own format carries it (task arguments and results, at any
//! depth inside them). A buffer inside a [`Context`](crate::Context) is
//! copied into the context's bytes.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;
use crate::error::{Error, Result};
use crate::fds::PoolFd;

mod sealed {
    pub trait Sealed {}
}

/// The element types a [`Buffer`] holds: fixed-size numbers for which every
/// bit pattern is a valid value and whose memory has no padding (`u8` to
/// `u128`, `i8` to `i128`, `f32`, `f64`, `usize`, `isize`). Sealed: the
/// pool maps another process's bytes as `[T]`, which is only sound for
/// these.
///
/// ```
/// fn total<T: forkpool::Plain + Into<f64>>(b: &forkpool::Buffer<T>) -> f64 {
///     b.iter().map(|&x| x.into()).sum()
/// }
/// # fn main() -> Result<(), forkpool::Error> {
/// assert_eq!(total(&forkpool::Buffer::from_slice(&[1.5f32, 2.5])?), 4.0);
/// # Ok(()) }
/// ```
pub trait Plain:
    Copy + Send + Sync + 'static + Serialize + for<'de> Deserialize<'de> + sealed::Sealed
{
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {}
    )*};
}
plain!(
    u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, f32, f64, usize, isize
);

/// The sealed memory file behind one or more [`Buffer`]s (clones share it),
/// mapped read-only in this process.
pub(crate) struct Sealed {
    fd: OwnedFd,
    /// `None` for an empty file (nothing to map).
    map: Option<memmap2::Mmap>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("fd", &self.fd)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl Sealed {
    /// The descriptor that travels to the other side.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A buffer's descriptor waiting to be sent with a task or a result; it
/// keeps the memory file open until then.
pub(crate) type Outgoing = Arc<Sealed>;

/// An immutable array of plain numbers in a sealed memory file, passed by
/// value to and from workers without going through the pipes.
///
/// Use it for large arrays in arguments and results (a `Vec<f64>` of
/// megabytes): the pool sends its descriptor, not its bytes, and the other
/// process maps the same pages. Building one costs one copy (from a slice
/// or a `Vec`) or none ([`Buffer::from_fn`], [`BufferMut`]); sending it,
/// returning it and cloning it cost none. The contents can never change
/// (the memory file is sealed), so what a worker received is what the
/// sender had when it sent it, as with any value passed by value.
///
/// It dereferences to `[T]`. To modify the numbers, copy them out
/// ([`to_vec`](Buffer::to_vec)) or build a new buffer.
///
/// ```
/// use forkpool::{Buffer, Pool};
///
/// fn scale(b: Buffer<f64>) -> Buffer<f64> {
///     // Read in place, build the answer in place: no copy of the input,
///     // one write of the output.
///     Buffer::from_fn(b.len(), |i| 2.0 * b[i]).expect("memory for the result")
/// }
///
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = Pool::new(2)?;
/// let input = Buffer::from_slice(&[1.0, 2.0, 3.0])?;
/// let out = pool.apply(scale, input)?;
/// assert_eq!(&out[..], &[2.0, 4.0, 6.0]);
/// # Ok(()) }
/// ```
///
/// Every buffer holds one descriptor while it lives (the pool's
/// descriptor limit, [`Error::DescriptorLimit`], counts them), and its
/// memory is shared by every process that holds it: a worker's
/// `Buffer` argument costs it no memory of its own until it copies it.
pub struct Buffer<T: Plain> {
    inner: Arc<Sealed>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Buffer<T> {
    /// A buffer holding a copy of `items` (one copy, into a new memory
    /// file).
    ///
    /// # Errors
    ///
    /// [`Error::DescriptorLimit`] when no descriptor is left for the memory
    /// file, [`Error::Io`] when it cannot be created or mapped (out of
    /// memory).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let b = forkpool::Buffer::from_slice(&[1u32, 2, 3])?;
    /// assert_eq!(b.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn from_slice(items: &[T]) -> Result<Self> {
        // SAFETY: `T` is a plain number type (`Plain`): no padding, so every
        // byte of the slice is initialised; the length is its size in bytes,
        // and the borrow of `items` outlives the view.
        let bytes =
            unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), size_of_val(items)) };
        // The numbers are written into the file (pwrite), not copied into a
        // mapping of it: the kernel fills each new page as it allocates it
        // instead of zeroing it first, and no page table of ours is filled
        // for it (measured here, 64 MiB: 63-90 ms against 115-122 ms for a
        // populated mapping and a copy, with a 30 ms memcpy).
        let fd = new_memfd()?;
        let mut at = 0;
        while at < bytes.len() {
            match nix::sys::uio::pwrite(&fd, &bytes[at..], at as i64) {
                // A memory file takes every byte or fails (ENOSPC, ENOMEM);
                // no progress at all is an error too, never a spin.
                Ok(0) => return Err(Error::io("writing a buffer's memory file", Errno::ENOSPC)),
                Ok(n) => at += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::io("writing a buffer's memory file", e)),
            }
        }
        BufferMut::<T> {
            fd,
            map: None,
            len: items.len(),
            _t: PhantomData,
        }
        .freeze()
    }

    /// A buffer of `len` numbers, `f(i)` at index `i`, written in place
    /// (no copy).
    ///
    /// # Errors
    ///
    /// As [`from_slice`](Buffer::from_slice).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let squares = forkpool::Buffer::from_fn(4, |i| (i * i) as u64)?;
    /// assert_eq!(&squares[..], &[0, 1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> T) -> Result<Self> {
        let mut b = BufferMut::<T>::populated(len)?;
        for (i, x) in b.iter_mut().enumerate() {
            *x = f(i);
        }
        b.freeze()
    }

    /// How many numbers it holds.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// assert_eq!(forkpool::Buffer::<i8>::from_slice(&[])?.len(), 0);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no numbers.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// assert!(forkpool::Buffer::<i8>::from_slice(&[])?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The numbers.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let b = forkpool::Buffer::from_slice(&[7i64])?;
    /// assert_eq!(b.as_slice(), &[7]);
    /// # Ok(()) }
    /// ```
    pub fn as_slice(&self) -> &[T] {
        let bytes = self.inner.bytes();
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is at least `len * size_of::<T>()` bytes (checked
        // when it was made or received), page-aligned (so aligned for any `T`),
        // and lives as long as `self.inner`, which the borrow holds. The file
        // is sealed against writes, growth and shrinking, so no process can
        // change or remove these bytes while we read them, and `T: Plain`
        // accepts any bit pattern.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), self.len) }
    }

    /// A copy of the numbers in a new `Vec` (the way to get numbers to
    /// modify).
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let mut v = forkpool::Buffer::from_slice(&[1u8, 2])?.to_vec();
    /// v.push(3);
    /// assert_eq!(v, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }

    /// The descriptor of the sealed memory file (for `fstat`, or to pass it
    /// on by other means); it stays owned by the buffer.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let b = forkpool::Buffer::from_slice(&[0u64; 4])?;
    /// let size = std::fs::File::from(b.as_fd().try_clone_to_owned().unwrap())
    ///     .metadata().unwrap().len();
    /// assert_eq!(size, 32);
    /// # Ok(()) }
    /// ```
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }

    /// Maps a received descriptor that claims to hold `len` numbers,
    /// checking that it is a sealed memory file of exactly that size.
    pub(crate) fn from_received(fd: OwnedFd, len: u64) -> std::result::Result<Self, String> {
        let what = std::any::type_name::<T>();
        let want = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(size_of::<T>()))
            .ok_or_else(|| format!("a buffer of {len} `{what}` does not fit in memory"))?;
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(|e| {
            format!(
                "the descriptor of a buffer of {len} `{what}` is not a memory file \
                 (F_GET_SEALS: {e}); only buffers made by forkpool::Buffer travel out of band"
            )
        })?;
        let seals = SealFlag::from_bits_truncate(seals);
        let needed = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
        if !seals.contains(needed) {
            return Err(format!(
                "the memory file of a buffer of {len} `{what}` is not sealed against \
                 writing, growing and shrinking (seals {seals:?}): refused, because its \
                 sender could still change what this side reads"
            ));
        }
        let size = nix::sys::stat::fstat(&fd)
            .map_err(|e| format!("fstat of a buffer's memory file: {e}"))?
            .st_size;
        if u64::try_from(size) != Ok(want as u64) {
            return Err(format!(
                "the memory file of a buffer of {len} `{what}` holds {size} bytes, not {want}"
            ));
        }
        let map = map_read_only(&fd, want)
            .map_err(|e| format!("mapping a received buffer of {want} bytes: {e}"))?;
        Ok(Buffer {
            inner: Arc::new(Sealed { fd, map }),
            len: len as usize,
            _t: PhantomData,
        })
    }
}

fn map_read_only(fd: &OwnedFd, bytes: usize) -> std::io::Result<Option<memmap2::Mmap>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: the file is a sealed memfd (checked by every caller): its
    // contents and size cannot change while mapped, which is what makes a
    // read-only view of it sound to hand out as a slice.
    unsafe { memmap2::MmapOptions::new().len(bytes).map(fd) }.map(Some)
}

impl<T: Plain> Clone for Buffer<T> {
    /// Another handle on the same sealed memory (no copy).
    fn clone(&self) -> Self {
        Buffer {
            inner: self.inner.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Plain> Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Plain> AsRef<[T]> for Buffer<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: Plain + PartialEq> PartialEq for Buffer<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Plain> TryFrom<&[T]> for Buffer<T> {
    type Error = Error;
    /// As [`Buffer::from_slice`].
    fn try_from(items: &[T]) -> Result<Self> {
        Buffer::from_slice(items)
    }
}

impl<T: Plain> TryFrom<Vec<T>> for Buffer<T> {
    type Error = Error;
    /// As [`Buffer::from_slice`] (the `Vec` is copied, then freed).
    fn try_from(items: Vec<T>) -> Result<Self> {
        Buffer::from_slice(&items)
    }
}

/// A [`Buffer`] being written: a new memory file mapped writable by this
/// process only, filled in place, then [`freeze`](BufferMut::freeze)d into
/// a `Buffer` (sealed) without copying.
///
/// ```
/// use forkpool::BufferMut;
/// # fn main() -> Result<(), forkpool::Error> {
/// let mut b = BufferMut::<f64>::zeroed(1000)?;
/// for (i, x) in b.iter_mut().enumerate() {
///     *x = i as f64;
/// }
/// let b = b.freeze()?;
/// assert_eq!(b[999], 999.0);
/// # Ok(()) }
/// ```
pub struct BufferMut<T: Plain> {
    fd: OwnedFd,
    map: Option<memmap2::MmapMut>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> BufferMut<T> {
    /// A new buffer of `len` zeroes (the memory file's pages are zero until
    /// written; they are allocated as they are written).
    ///
    /// # Errors
    ///
    /// [`Error::DescriptorLimit`] when no descriptor is left,
    /// [`Error::Io`] when the memory file cannot be made or mapped.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let b = forkpool::BufferMut::<u16>::zeroed(3)?;
    /// assert_eq!(&b[..], &[0, 0, 0]);
    /// # Ok(()) }
    /// ```
    pub fn zeroed(len: usize) -> Result<Self> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or(Error::Config {
            reason: format!(
                "a buffer of {len} `{}` is larger than the address space",
                std::any::type_name::<T>()
            ),
        })?;
        let fd = new_memfd()?;
        nix::unistd::ftruncate(&fd, bytes as i64)
            .map_err(|e| Error::io("sizing a buffer's memory file", e))?;
        let map = if bytes == 0 {
            None
        } else {
            // SAFETY: a memfd just made by this process and known to no
            // other: nothing else can map, write or truncate it while this
            // writable mapping lives (until `freeze` or drop).
            let map = unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(&fd) }
                .map_err(|e| Error::io("mapping a new buffer", e))?;
            Some(map)
        };
        Ok(BufferMut {
            fd,
            map,
            len,
            _t: PhantomData,
        })
    }

    /// [`zeroed`](BufferMut::zeroed), with every page allocated at once
    /// (`MADV_POPULATE_WRITE`), for a buffer about to be written whole:
    /// one call instead of a page fault per 4 KiB page. Running out of
    /// memory is then an error here rather than the OOM killer later.
    fn populated(len: usize) -> Result<Self> {
        let b = Self::zeroed(len)?;
        if let Some(map) = &b.map
            && let Err(e) = map.advise(memmap2::Advice::PopulateWrite)
        {
            // Before Linux 5.14 (EINVAL), the pages come as they are written.
            if e.raw_os_error() == Some(libc::ENOMEM) {
                return Err(Error::io("allocating the memory of a buffer", e));
            }
        }
        Ok(b)
    }

    /// Seals the memory file (no process can change it any more) and
    /// returns the immutable [`Buffer`]; no copy, unless a process forked
    /// while this buffer was being written still maps it writable (then
    /// the numbers are copied into a fresh memory file, which is sealed
    /// instead).
    ///
    /// # Errors
    ///
    /// As [`zeroed`](BufferMut::zeroed), for the mapping and the fallback
    /// copy.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let mut b = forkpool::BufferMut::<i32>::zeroed(2)?;
    /// b[1] = -1;
    /// assert_eq!(&b.freeze()?[..], &[0, -1]);
    /// # Ok(()) }
    /// ```
    pub fn freeze(mut self) -> Result<Buffer<T>> {
        let bytes = self.len * size_of::<T>();
        // The writable mapping must go before F_SEAL_WRITE is accepted.
        let writable = self.map.take();
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_SEAL;
        match seal(&self.fd, seals, writable) {
            Ok(()) => {}
            Err((Errno::EBUSY, Some(writable))) => {
                // Another process (forked meanwhile) maps it writable: copy
                // the numbers into a file nobody else has seen.
                let mut fresh = BufferMut::<T>::zeroed(self.len)?;
                fresh.as_bytes_mut().copy_from_slice(&writable[..]);
                drop(writable);
                return fresh.freeze();
            }
            Err((e, _)) => return Err(Error::io("sealing a buffer's memory file", e)),
        }
        let map = map_read_only(&self.fd, bytes)
            .map_err(|e| Error::io("mapping a sealed buffer read-only", e))?;
        Ok(Buffer {
            inner: Arc::new(Sealed { fd: self.fd, map }),
            len: self.len,
            _t: PhantomData,
        })
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }
}

/// Unmaps `writable`, then seals; gives the mapping back (remapped) if
/// sealing failed, so the caller can still read it.
fn seal(
    fd: &OwnedFd,
    seals: SealFlag,
    writable: Option<memmap2::MmapMut>,
) -> std::result::Result<(), (Errno, Option<memmap2::Mmap>)> {
    let bytes = writable.as_ref().map_or(0, |m| m.len());
    drop(writable);
    match fcntl(fd, FcntlArg::F_ADD_SEALS(seals)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let back = if bytes == 0 {
                None
            } else {
                // SAFETY: read-only view of our own memfd, used only to copy
                // it out right away; a process that still maps it writable
                // (why we are here) is a fork of ours running our code,
                // which never writes to a buffer it did not make.
                unsafe { memmap2::MmapOptions::new().len(bytes).map(fd) }.ok()
            };
            Err((e, back))
        }
    }
}

fn new_memfd() -> Result<OwnedFd> {
    memfd_create(
        c"forkpool-buffer",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| Error::from_call("creating a buffer's memory file", "memfd_create", e))
}

impl<T: Plain> Deref for BufferMut<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: the mapping holds exactly `len` `T`s, page-aligned; only
            // this process maps it (the memfd is ours alone until frozen), and
            // `&self` excludes our own writes for the borrow's life.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<T>(), self.len) },
            None => &[],
        }
    }
}

impl<T: Plain> DerefMut for BufferMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len;
        match &mut self.map {
            // SAFETY: as in `deref`, and `&mut self` makes this the only
            // access; every bit pattern is a valid `T`.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<T>(), len) },
            None => &mut [],
        }
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for BufferMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

// ---------------------------------------------------------------------------
// Out of band: where the pool's format puts descriptors and finds them.

thread_local! {
    /// Where the pool's encoder collects the descriptors of the buffers it
    /// meets (null: not encoding for the pool here). A raw pointer in a
    /// `const` cell: no drop glue, so using it in a worker registers no
    /// thread-local destructor (glibc takes a loader lock for that).
    static OUTGOING: Cell<*mut Vec<Outgoing>> = const { Cell::new(std::ptr::null_mut()) };
    /// Where the pool's decoder takes descriptors from, in order.
    static INCOMING: Cell<*mut Incoming> = const { Cell::new(std::ptr::null_mut()) };
}

/// The descriptors a value being decoded came with.
pub(crate) enum Incoming {
    /// All of them, received before decoding started (results, in the
    /// parent).
    Ready(VecDeque<PoolFd>),
    /// Received on demand from a worker's side channel.
    Worker,
}

/// Runs `f` with `slot` as the place where a thread's pool encoder or
/// decoder looks, restoring the previous one after (also on unwind).
fn with_slot<S: 'static, R>(
    key: &'static std::thread::LocalKey<Cell<*mut S>>,
    slot: &mut S,
    f: impl FnOnce() -> R,
) -> R {
    with_slot_at(key, slot, f)
}

/// [`with_slot`] with the slot given by a pointer (which the caller keeps
/// using beside the thread's copy, see [`encoding_each`]).
fn with_slot_at<S: 'static, R>(
    key: &'static std::thread::LocalKey<Cell<*mut S>>,
    slot: *mut S,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<S: 'static>(&'static std::thread::LocalKey<Cell<*mut S>>, *mut S);
    impl<S> Drop for Restore<S> {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(key, key.replace(slot));
    f()
}

/// Encodes `value` in the pool's format, appending the descriptors of the
/// buffers in it to `fds` (in the order the decoder will want them). On
/// error, `out` and `fds` are left as they were.
#[cfg(test)]
pub(crate) fn encode_into<V: Serialize + ?Sized>(
    value: &V,
    out: &mut Vec<u8>,
    fds: &mut Vec<Outgoing>,
) -> std::result::Result<(), codec::Error> {
    encode_noting_run(value, out, fds, &mut None)
}

/// [`encode_into`], also noting the largest run of plain numbers in `out`
/// ([`codec::encode_noting_run`]).
pub(crate) fn encode_noting_run<V: Serialize + ?Sized>(
    value: &V,
    out: &mut Vec<u8>,
    fds: &mut Vec<Outgoing>,
    run: &mut Option<codec::RunAt>,
) -> std::result::Result<(), codec::Error> {
    let mark = fds.len();
    let r = with_slot(&OUTGOING, fds, || codec::encode_noting_run(value, out, run));
    if r.is_err() {
        fds.truncate(mark);
    }
    r
}

/// Runs `body` with an [`Encoding`] that encodes values one after another
/// as [`encode_noting_run`] does each, appending the descriptors of their
/// buffers to `fds`: the thread's slot is entered once for all of them
/// (a job's items: tiny ones cost little more than their bytes).
pub(crate) fn encoding_each<X>(
    fds: &mut Vec<Outgoing>,
    body: impl FnOnce(&mut Encoding<'_>) -> X,
) -> X {
    let fds: *mut Vec<Outgoing> = fds;
    let mut encoding = Encoding {
        fds,
        _borrow: PhantomData,
    };
    with_slot_at(&OUTGOING, fds, || body(&mut encoding))
}

/// Encodes values in the pool's format while the thread's encoder puts
/// the descriptors of their buffers in one `Vec` ([`encoding_each`]).
pub(crate) struct Encoding<'a> {
    /// The `Vec`, also in the thread's slot while this exists (the
    /// encoder pushes through that copy, only inside `encode`).
    fds: *mut Vec<Outgoing>,
    _borrow: PhantomData<&'a mut Vec<Outgoing>>,
}

impl Encoding<'_> {
    /// As [`encode_noting_run`]: on error, `out`, `run` and the
    /// descriptors are left as they were.
    #[inline]
    pub(crate) fn encode<V: Serialize + ?Sized>(
        &mut self,
        value: &V,
        out: &mut Vec<u8>,
        run: &mut Option<codec::RunAt>,
    ) -> std::result::Result<(), codec::Error> {
        let mark = self.fds();
        let r = codec::encode_noting_run(value, out, run);
        if r.is_err() {
            // SAFETY: `fds` comes from the `&mut Vec` `encoding_each` was
            // given, borrowed for this value's lifetime; the only other
            // use of the pointer is the encoder's, inside
            // `encode_noting_run`, which has returned.
            unsafe { (*self.fds).truncate(mark) };
        }
        r
    }

    /// Drops the descriptors collected after the first `n` (those of a
    /// value whose encoding is dropped).
    pub(crate) fn truncate(&mut self, n: usize) {
        // SAFETY: as in `encode`: no other use of the `Vec` is under way.
        unsafe { (*self.fds).truncate(n) }
    }

    /// Descriptors collected so far.
    #[inline]
    pub(crate) fn fds(&self) -> usize {
        // SAFETY: as in `encode`: no other use of the `Vec` is under way.
        unsafe { (*self.fds).len() }
    }
}

/// Runs `decode` with `incoming` as the source of the descriptors of the
/// buffers it meets.
pub(crate) fn decoding<R>(incoming: &mut Incoming, decode: impl FnOnce() -> R) -> R {
    with_slot(&INCOMING, incoming, decode)
}

/// Hands the next descriptor to a buffer being decoded.
fn next_incoming() -> std::result::Result<OwnedFd, String> {
    let at = INCOMING.get();
    if at.is_null() {
        return Err(
            "a buffer sent out of band is being decoded outside the pool \
                    (its descriptor is not here): decode it where the pool does"
                .to_string(),
        );
    }
    // SAFETY: non-null only inside `decoding`, whose `&mut Incoming` outlives
    // the call; this thread is the only one that reads the cell, and
    // nothing else borrows the slot while decode runs.
    match unsafe { &mut *at } {
        Incoming::Ready(fds) => fds.pop_front().map(PoolFd::into_owned).ok_or_else(|| {
            "a buffer's descriptor is missing: the value names more buffers than \
             descriptors came with it"
                .to_string()
        }),
        Incoming::Worker => crate::side::worker_next_fd(),
    }
}

/// Tag byte before a buffer in the pool's format.
const INLINE: u8 = 0;
const OUT_OF_BAND: u8 = 1;

impl<T: Plain> Serialize for Buffer<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if !codec::is_encoder::<S>() {
            // Any other format: the numbers, as a sequence.
            return serializer.collect_seq(self.as_slice());
        }
        let mut t = serializer.serialize_tuple(2)?;
        let sink = OUTGOING.get();
        if sink.is_null() {
            // The pool's format outside a task (a context): the numbers.
            t.serialize_element(&INLINE)?;
            t.serialize_element(&Numbers(self.as_slice()))?;
        } else {
            // SAFETY: non-null only inside `encode_into`, whose `&mut Vec`
            // outlives the call; only this thread uses the cell.
            unsafe { &mut *sink }.push(self.inner.clone());
            t.serialize_element(&OUT_OF_BAND)?;
            t.serialize_element(&(self.len as u64))?;
        }
        t.end()
    }
}

/// A slice serialised through `collect_seq` (the codec's bulk path).
struct Numbers<'a, T>(&'a [T]);

impl<T: Plain> Serialize for Numbers<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Buffer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        if !codec::is_decoder::<D>() {
            let items = Vec::<T>::deserialize(deserializer)?;
            return Buffer::from_slice(&items).map_err(de::Error::custom);
        }
        deserializer.deserialize_tuple(2, Tagged(PhantomData))
    }
}

struct Tagged<T>(PhantomData<T>);

impl<'de, T: Plain> Visitor<'de> for Tagged<T> {
    type Value = Buffer<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a forkpool::Buffer")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Buffer<T>, A::Error> {
        let missing = || de::Error::custom("a buffer cut short");
        match seq.next_element::<u8>()?.ok_or_else(missing)? {
            INLINE => {
                let items: Vec<T> = seq.next_element()?.ok_or_else(missing)?;
                Buffer::from_slice(&items).map_err(de::Error::custom)
            }
            OUT_OF_BAND => {
                let len: u64 = seq.next_element()?.ok_or_else(missing)?;
                let fd = next_incoming().map_err(de::Error::custom)?;
                Buffer::from_received(fd, len).map_err(de::Error::custom)
            }
            tag => Err(de::Error::custom(format!(
                "a buffer with tag {tag} (0: inline, 1: out of band)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_buffer_is_sealed_and_the_seals_are_checked() {
        let b = Buffer::from_slice(&[1u32, 2, 3]).unwrap();
        let fd = b.as_fd().try_clone_to_owned().unwrap();
        let back = Buffer::<u32>::from_received(fd, 3).unwrap();
        assert_eq!(&back[..], &[1, 2, 3]);
        // Writing through a descriptor of a frozen buffer is refused.
        let mut f = std::fs::File::from(b.as_fd().try_clone_to_owned().unwrap());
        assert!(std::io::Write::write(&mut f, &[9]).is_err());
        // The wrong size.
        let fd = b.as_fd().try_clone_to_owned().unwrap();
        let e = Buffer::<u32>::from_received(fd, 4).unwrap_err();
        assert!(e.contains("holds 12 bytes, not 16"), "{e}");
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let fd = memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, 8).unwrap();
        let e = Buffer::<u64>::from_received(fd, 1).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");
        let file = tempfile::tempfile().unwrap();
        let e = Buffer::<u64>::from_received(file.into(), 0).unwrap_err();
        assert!(e.contains("not a memory file"), "{e}");
    }

    #[test]
    fn other_formats_see_a_plain_sequence() {
        let b = Buffer::from_slice(&[1.5f64, -2.0]).unwrap();
        let bytes = postcard::to_allocvec(&b).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&vec![1.5f64, -2.0]).unwrap());
        let back: Buffer<f64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn the_pool_format_outside_a_task_carries_the_numbers() {
        let b = Buffer::from_slice(&[5u16; 100]).unwrap();
        let mut out = Vec::new();
        codec::encode_into(&b, &mut out).unwrap();
        assert_eq!(out.len(), 1 + 8 + 200);
        let back: Buffer<u16> = codec::decode_from(&mut &out[..]).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn out_of_band_encoding_collects_descriptors_and_rolls_back_on_error() {
        let b = Buffer::from_slice(&[1u8, 2]).unwrap();
        let mut out = Vec::new();
        let mut fds = Vec::new();
        encode_into(&(b.clone(), 7u8, b.clone()), &mut out, &mut fds).unwrap();
        assert_eq!((out.len(), fds.len()), (2 * 9 + 1, 2));

        struct Fails<'a>(&'a Buffer<u8>);
        impl Serialize for Fails<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::Error as _;
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(self.0)?;
                Err(S::Error::custom("no"))
            }
        }
        assert!(encode_into(&Fails(&b), &mut out, &mut fds).is_err());
        assert_eq!((out.len(), fds.len()), (2 * 9 + 1, 2));

        // Decoding takes them in order.
        let mut incoming = Incoming::Ready(
            fds.iter()
                .map(|s| {
                    let [fd] = PoolFd::create(|| s.fd().try_clone_to_owned().map(|f| [f])).unwrap();
                    fd
                })
                .collect(),
        );
        let (x, n, y): (Buffer<u8>, u8, Buffer<u8>) =
            decoding(&mut incoming, || codec::decode_from(&mut &out[..])).unwrap();
        assert_eq!((&x[..], n, &y[..]), (&[1u8, 2][..], 7, &[1u8, 2][..]));
        // Without its descriptors, a clear error.
        let e = codec::decode_from::<Buffer<u8>>(&mut &out[..]).unwrap_err();
        assert!(e.to_string().contains("outside the pool"), "{e}");
    }

    #[test]
    fn empty_buffers_work() {
        let b = Buffer::<f32>::from_slice(&[]).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.as_slice(), &[] as &[f32]);
        let fd = b.as_fd().try_clone_to_owned().unwrap();
        assert!(Buffer::<f32>::from_received(fd, 0).unwrap().is_empty());
    }
}
