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
//!
//! # Runs: big arrays read straight into their `Vec`
//!
//! A frame whose payload holds a big run of plain numbers (a `Vec<f64>`'s
//! elements, [`RunAt`]) says so up front: its kind byte has the [`RUN`]
//! bit, followed by the run's place in the body, its length and its
//! element size (three u64s), then the body as usual with the run in it:
//!
//! ```text
//! [len][kind | RUN][at][run len][elem] [kind's header, payload ... run ... payload]
//! ```
//!
//! The reader reads the bytes before the run into the body, the run itself
//! into an allocation of its own ([`RunBuf`], aligned for its numbers and
//! pre-faulted in bulk), and the rest into the body again; the decoder
//! then hands that allocation over as the `Vec` ([`codec::Input`]). So a
//! big value is copied once on its way in: by `read`, from the pipe into
//! its final memory. The writer sends such a frame as the head above plus
//! its encoded bytes, with one vectored write (no assembled copy).
//!
//! The memory a run is read into is, where it can be, not new: a big
//! `Vec` of plain numbers the pool owned and was done with (an argument
//! the parent encoded, a result a worker encoded) is kept as the process's
//! spare ([`recycle`]), and the next run of that alignment is read into its
//! pages, already faulted in. A 64 MiB round trip then allocates nothing in
//! steady state: a pipe transfer into warm memory took half the time of
//! one into new memory here, populated in bulk or not.
//!
//! `apply`'s argument, when it is a big `Vec` of plain numbers, is kept
//! by its job and written from its own memory when its task goes
//! ([`lend_into`], [`OutFrame`]); a worker likewise writes a task's last
//! result, when it is such a `Vec`, from the `Vec`'s own memory
//! ([`lend`]): the result frame goes
//! out as its head, the encoded bytes up to the numbers, the numbers where
//! the `Vec` holds them, and the rest, in one vectored write; then the
//! `Vec`'s memory becomes the spare. Only a `Vec<P>` recognised by its type
//! id is written so: a slice a value's `Serialize` hands the format may
//! live only during the call, so anything else is copied.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use nix::sys::mman::MmapAdvise;

use crate::codec::{self, Plain, RunAt, plain_types};

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
/// The bit of a kind byte that says the frame carries a run apart (see
/// the module docs).
pub(crate) const RUN: u8 = 0x80;
/// The bit of a `TASK` or `RESULT` kind byte that says descriptors of the
/// frame's buffers went ahead on the side channel ([`crate::side`]): the
/// parent looks there only for such results (looking for every result cost
/// a `recvmsg` per tiny task), and a worker decoding a task without it
/// fails at once if the arguments name a buffer, rather than wait for a
/// descriptor that was never sent.
pub(crate) const FDS: u8 = 0x40;
/// Bytes of a run's description after the kind byte: place, length,
/// element size.
const RUN_DESC: usize = 3 * 8;

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

/// Memory for a frame's run of plain numbers ([`RUN`]): `want` bytes,
/// allocated the way a `Vec` of `elem`-byte numbers allocates them (so a
/// `Vec` can take it over, [`into_vec`](Self::into_vec)), grown as bytes
/// arrive (a corrupt length cannot make it allocate a terabyte up front),
/// each new part faulted in with one call rather than a fault per page.
pub(crate) struct RunBuf {
    ptr: NonNull<u8>,
    /// Bytes allocated (0: nothing yet, `ptr` dangling).
    cap: usize,
    /// Bytes filled.
    got: usize,
    want: usize,
    elem: usize,
}

// SAFETY: a `RunBuf` owns its allocation alone, as a `Vec<u8>` does, and
// has no shared state: moving it to another thread moves the ownership.
unsafe impl Send for RunBuf {}

impl std::fmt::Debug for RunBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RunBuf({} of {} bytes, {}-byte numbers)",
            self.got, self.want, self.elem
        )
    }
}

impl RunBuf {
    /// An empty buffer for a run of `want` bytes of `elem`-byte numbers;
    /// `None` unless `elem` is a number size (1, 2, 4, 8 or 16) dividing a
    /// non-zero `want`.
    fn new(want: usize, elem: usize) -> Option<RunBuf> {
        let ok = matches!(elem, 1 | 2 | 4 | 8 | 16) && want > 0 && want.is_multiple_of(elem);
        ok.then(|| RunBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            got: 0,
            want,
            elem,
        })
    }

    /// A filled buffer holding a copy of `bytes` (`None` as [`new`](Self::new)).
    #[cfg(test)]
    pub(crate) fn copy_of(bytes: &[u8], elem: usize) -> Option<RunBuf> {
        let mut run = RunBuf::new(bytes.len(), elem)?;
        let n = run.feed(bytes).ok()?;
        debug_assert_eq!(n, bytes.len());
        Some(run)
    }

    /// Bytes of the run (all of them once the frame is complete).
    pub(crate) fn len(&self) -> usize {
        self.want
    }

    /// Size of its numbers.
    pub(crate) fn elem(&self) -> usize {
        self.elem
    }

    /// The bytes filled so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the first `got` bytes of the allocation (or none, with a
        // dangling pointer, when nothing is allocated) were written.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.got) }
    }

    fn full(&self) -> bool {
        self.got == self.want
    }

    /// Allocates more room (at least one byte, never past `want`).
    fn grow(&mut self) -> Result<(), FrameError> {
        debug_assert!(self.cap < self.want);
        if self.cap == 0 && self.adopt_spare() {
            return Ok(());
        }
        let new_cap = self.want.min(self.cap.saturating_mul(2).max(GROW_STEP));
        let oom = FrameError::OutOfMemory {
            len: self.want as u64,
        };
        let layout = Layout::from_size_align(new_cap, self.elem).map_err(|_| oom.clone())?;
        let ptr = if self.cap == 0 {
            // SAFETY: `layout` has a non-zero size (`want` > 0).
            unsafe { std::alloc::alloc(layout) }
        } else {
            let old = Layout::from_size_align(self.cap, self.elem).expect("allocated with it");
            // SAFETY: `ptr` was allocated by the global allocator with
            // `old`; the new size is non-zero and fits `isize` (checked by
            // `Layout::from_size_align` above).
            unsafe { std::alloc::realloc(self.ptr.as_ptr(), old, new_cap) }
        };
        self.ptr = NonNull::new(ptr).ok_or(oom)?;
        prefault(&self.ptr, self.cap, new_cap);
        self.cap = new_cap;
        Ok(())
    }

    /// Starts the buffer in the process's spare memory ([`recycle`]) if
    /// one of the right alignment is kept and big enough to be worth it;
    /// returns whether it did. Its pages are already in: `read` fills them
    /// without a fault each (a 64 MiB pipe transfer into such memory took
    /// half the time of one into new memory, populated or not).
    fn adopt_spare(&mut self) -> bool {
        match Spare::take().map(|spare| self.adopt(spare)) {
            Some(Ok(())) => true,
            Some(Err(spare)) => {
                spare.put_back();
                false
            }
            None => false,
        }
    }

    /// Starts the empty buffer in `spare`'s memory (cut down to the run's
    /// length if it is longer); the spare back if its alignment is not the
    /// run's, it is smaller than the first step the buffer would take
    /// anyway, or cutting it down failed.
    fn adopt(&mut self, spare: Spare) -> Result<(), Spare> {
        debug_assert_eq!(self.cap, 0);
        if spare.align != self.elem || spare.cap < self.want.min(GROW_STEP) {
            return Err(spare);
        }
        let spare = std::mem::ManuallyDrop::new(spare);
        if spare.cap <= self.want {
            self.ptr = spare.ptr;
            self.cap = spare.cap;
            return Ok(());
        }
        let old = Layout::from_size_align(spare.cap, spare.align).expect("allocated with it");
        // SAFETY: the spare was allocated by the global allocator with
        // `old` (see `Spare`) and is owned by this call alone (moved in,
        // not dropped); `want` is non-zero and smaller than the old size,
        // so it fits `isize`.
        let ptr = unsafe { std::alloc::realloc(spare.ptr.as_ptr(), old, self.want) };
        match NonNull::new(ptr) {
            Some(ptr) => {
                self.ptr = ptr;
                self.cap = self.want;
                Ok(())
            }
            // The allocation is unchanged when realloc fails.
            None => Err(std::mem::ManuallyDrop::into_inner(spare)),
        }
    }

    /// Copies as much of `bytes` as the run still wants; returns how much.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let n = bytes.len().min(self.want - self.got);
        while self.cap < self.got + n {
            self.grow()?;
        }
        // SAFETY: the allocation has room for `got + n` bytes (above), and
        // `bytes` is another object.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(self.got), n)
        };
        self.got += n;
        Ok(n)
    }

    /// Reads once from `fd` as much as there is room for; returns what
    /// read(2) returned (`None` for `EAGAIN`) and the room it had.
    fn read_from(&mut self, fd: BorrowedFd<'_>) -> Result<(Option<usize>, usize), FillError> {
        if self.got == self.cap {
            self.grow().map_err(FillError::Frame)?;
        }
        let room = self.cap - self.got;
        // SAFETY: `[got, cap)` is allocated memory owned by this buffer,
        // `room` bytes; read(2) writes at most `room` bytes into it.
        let ptr = unsafe { self.ptr.as_ptr().add(self.got) };
        let n = read_raw(fd, ptr, room).map_err(FillError::Io)?;
        if let Some(n) = n {
            self.got += n;
        }
        Ok((n, room))
    }

    /// The run as a `Vec<P>`, taking over its memory; the buffer back if
    /// it is not complete or not allocated as a `Vec<P>` allocates.
    pub(crate) fn into_vec<P: Plain>(self) -> Result<Vec<P>, RunBuf> {
        let size = std::mem::size_of::<P>();
        if !self.full()
            || self.cap != self.want
            || size != self.elem
            || align_of::<P>() != self.elem
        {
            return Err(self);
        }
        let n = self.want / size;
        let run = std::mem::ManuallyDrop::new(self);
        // SAFETY: the memory was allocated by the global allocator with
        // `Layout::from_size_align(n * size_of::<P>(), align_of::<P>())`
        // (checked above: `cap == want == n * elem`, `elem` is both the size
        // and the alignment of `P`), which is the layout of a `Vec<P>` of
        // capacity `n`; all `n` elements were written (`got == want`), and
        // any bytes are a valid `P` (`Plain`). The `RunBuf` is not dropped,
        // so the `Vec` is the memory's only owner.
        Ok(unsafe { Vec::from_raw_parts(run.ptr.as_ptr().cast::<P>(), n, n) })
    }
}

impl Drop for RunBuf {
    fn drop(&mut self) {
        if self.cap > 0 {
            let layout = Layout::from_size_align(self.cap, self.elem).expect("allocated with it");
            // SAFETY: allocated by the global allocator with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// Faults in, in one call, the whole pages of `[from, to)` bytes of the
/// allocation at `ptr` (`MADV_POPULATE_WRITE`, Linux 5.14+; elsewhere the
/// pages fault one by one as `read` fills them). A fault per 4 KiB page
/// inside `read` is what made new memory the slowest part of a big value's
/// trip (measured: 64 MiB filled by faults 120-170 ms, populated first
/// 65-130 ms, on the loaded 2-core VM).
fn prefault(ptr: &NonNull<u8>, from: usize, to: usize) {
    let base = ptr.as_ptr() as usize;
    // SAFETY: `[base + from, base + to)` lies inside the allocation, which
    // this process owns; populating pages changes no byte of them (pages
    // not yet present read as zero before and after). A failure (an old
    // kernel) only leaves the faults to `read`.
    unsafe { advise(base + from, base + to, MmapAdvise::MADV_POPULATE_WRITE) };
}

/// `madvise(advice)` on the whole pages of `[from, to)`, best effort.
///
/// # Safety
///
/// The range must be memory this process owns, and `advice` must change
/// nothing that any live reference into it relies on.
unsafe fn advise(from: usize, to: usize, advice: MmapAdvise) {
    const PAGE: usize = 4096;
    let start = from.next_multiple_of(PAGE);
    let end = to & !(PAGE - 1);
    if end > start {
        // SAFETY: the caller's promise; `start` is not null (page-aligned
        // inward from a live allocation).
        let _ = unsafe {
            nix::sys::mman::madvise(
                NonNull::new(start as *mut libc::c_void).expect("non-null"),
                end - start,
                advice,
            )
        };
    }
}

/// Memory kept for the next run received ([`RunBuf`]): the allocation of
/// a big `Vec` of plain numbers the pool owned and was done with (an
/// argument the parent sent, a result a worker sent; [`recycle`]).
/// Receiving into it instead of into new memory spares a page fault (and
/// the zeroing and accounting of a new page) per 4 KiB, and freeing it
/// spares the `munmap` of the old one: a round trip of a 64 MiB value
/// allocates nothing in steady state.
struct Spare {
    /// Allocated by the global allocator with `Layout::from_size_align(cap,
    /// align)`, owned by this value alone.
    ptr: NonNull<u8>,
    cap: usize,
    align: usize,
}

// SAFETY: a `Spare` owns its allocation alone, as a `Vec<u8>` does; moving
// it to another thread moves the ownership.
unsafe impl Send for Spare {}

/// The process's one [`Spare`], boxed, or null. An atomic rather than a
/// lock: a worker is a fork of a threaded parent, where a lock held at the
/// fork would stay held forever.
static SPARE_RUN: std::sync::atomic::AtomicPtr<Spare> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

impl Spare {
    /// The kept spare, if any, taken out of the slot.
    fn take() -> Option<Spare> {
        let p = SPARE_RUN.swap(std::ptr::null_mut(), std::sync::atomic::Ordering::AcqRel);
        // SAFETY: a non-null pointer in the slot came from `Box::into_raw`
        // in `put_back`, and the swap made this call its only owner.
        (!p.is_null()).then(|| *unsafe { Box::from_raw(p) })
    }

    /// Keeps this spare, unless one at least as big with the same
    /// alignment is kept already (then this one is freed).
    fn put_back(self) {
        let old = Spare::take();
        let keep = match old {
            Some(old) if old.align == self.align && old.cap > self.cap => old,
            _ => self,
        };
        let p = Box::into_raw(Box::new(keep));
        let prev = SPARE_RUN.swap(p, std::sync::atomic::Ordering::AcqRel);
        if !prev.is_null() {
            // Another thread kept one meanwhile: free it.
            // SAFETY: as in `take`.
            drop(unsafe { Box::from_raw(prev) });
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, self.align).expect("allocated with it");
        // SAFETY: allocated by the global allocator with this layout, owned
        // by this value alone (see the field's docs).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Frees the spare this process inherited at its fork, if any: its pages
/// are shared copy-on-write with the process it was forked from, so
/// receiving into them would copy each page before writing it.
pub(crate) fn forget_inherited_spare() {
    drop(Spare::take());
}

/// Frees both of this process's kept allocations: the spare output buffer
/// ([`take_spare`]) and the spare run memory ([`recycle`]). Called before a
/// zygote forks (every process of the new pool would otherwise map them
/// for its whole life) and when a pool is dropped (they are a cache for
/// the pools' next big value; with no pool, nothing would ever use them).
pub(crate) fn free_spares() {
    drop(take_spare());
    drop(Spare::take());
}

/// Disposes of a value the pool owns and is done with (an argument once
/// encoded, a result once encoded): a `Vec` of a plain number type of
/// [`codec::RUN_MIN`] to [`KEEP_MAX`] bytes becomes the process's spare
/// memory for the next run it receives ([`Spare`]); anything else is
/// dropped. Whether `V` is such a `Vec` is a type-id comparison (its size
/// first, known at compile time: small values pay nothing).
pub(crate) fn recycle<V>(value: V) {
    if let Ok(PlainVec { mem, .. }) = PlainVec::take(value, |_, cap| worth_keeping(cap)) {
        mem.put_back();
    }
}

/// A `Vec` of a plain number type taken apart: its allocation, now owned
/// as a [`Spare`], and how its bytes are numbers.
struct PlainVec {
    mem: Spare,
    /// How many numbers it held.
    count: usize,
    /// Bytes of one number.
    elem: usize,
}

impl PlainVec {
    /// `value` taken apart if it is a `Vec` of a plain number type (by
    /// type id; its size first, known at compile time) for which
    /// `want(bytes of its numbers, bytes of its allocation)` holds;
    /// `value` back, untouched, otherwise.
    fn take<V>(value: V, want: impl FnOnce(usize, usize) -> bool) -> Result<PlainVec, V> {
        if std::mem::size_of::<V>() != std::mem::size_of::<Vec<u8>>() {
            return Err(value);
        }
        macro_rules! check {
            ($($t:ty),*) => { $(
                if typeid::of::<V>() == typeid::of::<Vec<$t>>() {
                    // SAFETY: `V` is `Vec<$t>` (equal type ids; `Vec<$t>`
                    // has no lifetime that erasing could hide): a reference
                    // to the value is a reference to a `Vec<$t>`.
                    let v = unsafe { &*(&value as *const V).cast::<Vec<$t>>() };
                    let elem = std::mem::size_of::<$t>();
                    if !want(v.len() * elem, v.capacity() * elem) {
                        return Err(value);
                    }
                    let value = std::mem::ManuallyDrop::new(value);
                    // SAFETY: as above, this reads the value as its own
                    // type; the original is not dropped, so the copy read
                    // is the only owner.
                    let v: Vec<$t> = unsafe { std::mem::transmute_copy(&*value) };
                    let count = v.len();
                    return Ok(PlainVec { mem: Spare::owning(v), count, elem });
                }
            )* };
        }
        plain_types!(check);
        Err(value)
    }
}

/// Whether an allocation of `bytes` is kept as the spare ([`recycle`]):
/// big enough to be a run, not bigger than [`KEEP_MAX`].
///
/// Its pages are not lent back (`MADV_FREE`): marking them so and dirtying
/// them again cost a 64 MiB round trip 20-30 ms here, a fifth of it. So a
/// process holds at most one such allocation, of at most `KEEP_MAX` bytes,
/// until the next run it receives (or a bigger one), a pool is dropped or a
/// zygote forks ([`free_spares`]).
fn worth_keeping(bytes: usize) -> bool {
    (codec::RUN_MIN..=KEEP_MAX).contains(&bytes)
}

impl Spare {
    /// `v`'s allocation, if it is worth keeping ([`worth_keeping`]).
    #[cfg(test)]
    fn of_vec<P: Plain>(v: Vec<P>) -> Option<Spare> {
        worth_keeping(v.capacity() * std::mem::size_of::<P>()).then(|| Spare::owning(v))
    }

    /// `v`'s allocation, whatever its size (its numbers need no drop).
    fn owning<P: Plain>(v: Vec<P>) -> Spare {
        let mut v = std::mem::ManuallyDrop::new(v);
        // The `Vec` is not dropped: the spare is its allocation's only owner,
        // allocated as a `Vec<P>` of its capacity allocates, with the layout
        // `(capacity * size_of::<P>(), align_of::<P>())`.
        Spare {
            ptr: NonNull::new(v.as_mut_ptr().cast::<u8>()).expect("a Vec's pointer is not null"),
            cap: v.capacity() * std::mem::size_of::<P>(),
            align: std::mem::align_of::<P>(),
        }
    }
}

/// A big `Vec` of plain numbers that a worker's task returned, written to
/// the result pipe from its own memory instead of being copied into the
/// output buffer first ([`lend`]): its bytes go at `at` in the output
/// buffer (where they would have been copied), and its allocation becomes
/// the spare ([`recycle`]) once they are written.
pub(crate) struct Lent {
    /// Where in the output buffer its bytes belong.
    pub(crate) at: usize,
    /// Bytes of its numbers (its length, not its capacity).
    len: usize,
    /// The `Vec`'s allocation, owned.
    mem: Spare,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lent({} bytes at {})", self.len, self.at)
    }
}

impl Lent {
    /// The numbers' bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `mem` owns the allocation of a `Vec` of a plain number
        // type whose first `len` bytes were its elements (initialised, no
        // padding); nothing else refers to it, and the borrow of `self`
        // keeps it alive.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr(), self.len) }
    }

    /// Bytes lent in `lent`, all together.
    pub(crate) fn total(lent: &[Lent]) -> usize {
        lent.iter().map(|l| l.len).sum()
    }

    /// Done with (its bytes written): keeps its memory as the spare for the
    /// next run received, or frees it if it is too big to keep.
    pub(crate) fn done(self) {
        if self.mem.cap <= KEEP_MAX {
            self.mem.put_back();
        }
    }
}

thread_local! {
    /// Where [`lend`] puts what it lends: set by a worker around a task
    /// ([`with_lending`]), null elsewhere (the parent copies every value).
    /// A `const` cell without drop glue: a worker registers no destructor.
    static LENDING: std::cell::Cell<*mut Vec<Lent>> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` with [`lend`] putting what it lends in `lent`.
pub(crate) fn with_lending<R>(lent: &mut Vec<Lent>, f: impl FnOnce() -> R) -> R {
    struct Restore(*mut Vec<Lent>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LENDING.set(self.0);
        }
    }
    let _restore = Restore(LENDING.replace(lent));
    f()
}

/// Encodes a task's result that is a `Vec` of a plain number type of
/// [`codec::RUN_MIN`] bytes or more without copying its numbers: writes
/// its length to `out` as the codec would, notes its numbers as a run in
/// `run` if they are the largest, and lends the `Vec` to be written from
/// (inside [`with_lending`] only; `value` back otherwise, or if it is any
/// other type or smaller).
///
/// Only a `Vec<P>` itself, recognised by its type id: its numbers are its
/// own heap memory, which stays put and unchanged while it is kept. A
/// value's `Serialize` may hand the format a slice that lives only during
/// the call (a temporary, `#[serde(into)]`, a lock guard's contents), so
/// what it serialises is always copied. The caller must encode nothing
/// after a lent value into the same frame (the positions after it would be
/// off by its length).
pub(crate) fn lend<V>(value: V, out: &mut Vec<u8>, run: &mut Option<RunAt>) -> Result<(), V> {
    let slot = LENDING.get();
    if slot.is_null() {
        return Err(value);
    }
    // SAFETY: the slot is non-null only inside `with_lending`, which holds
    // the `&mut Vec<Lent>` it points to for the whole call, on this
    // thread, and no other reference to it is live here.
    lend_into(value, out, run, unsafe { &mut *slot })
}

/// [`lend`], putting what it lends in `lent` (the parent's way: an owned
/// argument, kept by its job until its frame is written).
pub(crate) fn lend_into<V>(
    value: V,
    out: &mut Vec<u8>,
    run: &mut Option<RunAt>,
    lent: &mut Vec<Lent>,
) -> Result<(), V> {
    let PlainVec { mem, count, elem } = PlainVec::take(value, |bytes, _| bytes >= codec::RUN_MIN)?;
    let bytes = count * elem;
    out.extend_from_slice(&(count as u64).to_le_bytes());
    let at = out.len() + Lent::total(lent);
    if run.is_none_or(|r| bytes > r.len) {
        *run = Some(RunAt {
            at,
            len: bytes,
            elem,
        });
    }
    lent.push(Lent {
        at: out.len(),
        len: bytes,
        mem,
    });
    Ok(())
}

/// The parts of `out` to write, in order, with the lent bytes where they
/// belong (`lent` in order of place, all at or after `from`), from `from`.
pub(crate) fn with_lent<'a>(out: &'a [u8], from: usize, lent: &'a [Lent]) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(2 * lent.len() + 1);
    let mut at = from;
    for l in lent {
        parts.push(&out[at..l.at]);
        parts.push(l.bytes());
        at = l.at;
    }
    parts.push(&out[at..]);
    parts
}

/// Largest output buffer kept for the next big frame rather than freed.
pub(crate) const KEEP_MAX: usize = 256 << 20;

/// Empties `buf` and lets the kernel take back its pages if it runs short
/// of memory (`MADV_FREE`): until then they stay mapped, so the next big
/// value encoded into `buf` is copied into memory already faulted in
/// instead of brand-new pages (new memory costs 3-5 times a copy into warm
/// memory on this VM, see the module docs). A buffer above [`KEEP_MAX`] is
/// freed instead.
pub(crate) fn lend_back(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > KEEP_MAX {
        *buf = Vec::new();
        return;
    }
    let base = buf.as_ptr() as usize;
    // SAFETY: the range is `buf`'s allocation, all of it spare capacity
    // now (`buf` is empty), which nothing reads before writing it;
    // MADV_FREE keeps the range mapped and only lets the kernel replace
    // pages not written since with zero pages.
    unsafe { advise(base, base + buf.capacity(), MmapAdvise::MADV_FREE) };
}

/// The parent's spare output buffer: the bytes of the last big task frame
/// written, kept (lent back, [`lend_back`]) for the next job's items. Only
/// the parent uses it (workers have their own output buffer): a lock here
/// taken by a thread at the zygote's fork is never taken after it.
static SPARE: parking_lot::Mutex<Option<Vec<u8>>> = parking_lot::Mutex::new(None);

/// Keeps `buf` as the parent's spare output buffer if it is big (and no
/// other is kept).
fn keep_spare(mut buf: Vec<u8>) {
    if buf.capacity() < codec::RUN_MIN || buf.capacity() > KEEP_MAX {
        return;
    }
    if let Some(mut spare) = SPARE.try_lock()
        && spare.as_ref().is_none_or(|s| s.capacity() < buf.capacity())
    {
        if buf.len() >= codec::RUN_MIN {
            lend_back(&mut buf);
        } else {
            // Only a few pages were written since it was last lent back
            // (it carried a small frame, an `apply`'s): no system call.
            // Lending it back after every small task cost a `madvise` each.
            buf.clear();
        }
        *spare = Some(buf);
    }
}

/// The parent's spare output buffer, empty, if one is kept.
pub(crate) fn take_spare() -> Option<Vec<u8>> {
    SPARE.try_lock()?.take()
}

/// The head to write in place of the first `head.len()` bytes of a frame
/// (its length prefix, kind byte and whatever follows them in `head`) so
/// that the frame carries `run` apart: `run.at` is the run's offset in the
/// frame's body (after the length prefix).
pub(crate) fn run_head(head: &[u8], run: RunAt) -> Vec<u8> {
    let body = u64::from_le_bytes(head[..LEN_PREFIX].try_into().expect("8 bytes"));
    debug_assert!(run.at >= head.len() - LEN_PREFIX);
    debug_assert!((run.at + run.len) as u64 <= body);
    let mut out = Vec::with_capacity(head.len() + RUN_DESC);
    out.extend_from_slice(&(body + RUN_DESC as u64).to_le_bytes());
    out.push(head[LEN_PREFIX] | RUN);
    for f in [run.at, run.len, run.elem] {
        out.extend_from_slice(&(f as u64).to_le_bytes());
    }
    out.extend_from_slice(&head[LEN_PREFIX + 1..]);
    out
}

/// A frame's body as read: the kind byte, the kind's header, the payload;
/// with a run carried apart, the run cut out of the bytes and held in its
/// own memory, with where it belongs.
#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) bytes: Vec<u8>,
    pub(crate) run: Option<(usize, RunBuf)>,
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body { bytes, run: None }
    }
}

impl Body {
    /// The payload from `at` on (in the body's layout, run included), to
    /// decode.
    pub(crate) fn into_input(self, at: usize) -> codec::Input {
        let at = at.min(self.bytes.len());
        codec::Input::new(self.bytes, at, self.run)
    }
}

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
        if body.len() < Self::BODY_LEN || body[0] & !FDS != TASK {
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

    /// Whether a task body is marked [`FDS`]: its buffers' descriptors went
    /// ahead on the side channel.
    pub(crate) fn carries_fds(body: &[u8]) -> bool {
        body.first().is_some_and(|k| k & FDS != 0)
    }
}

/// A frame being written into a buffer: where it starts.
#[must_use = "a started frame has no length until `finish`"]
pub(crate) struct Started(usize);

impl Started {
    /// Marks the frame as one whose descriptors went ahead ([`FDS`]).
    pub(crate) fn mark_fds(&self, out: &mut [u8]) {
        out[self.0 + LEN_PREFIX] |= FDS;
    }

    /// Patches the length of the frame (everything appended since it
    /// started).
    pub(crate) fn finish(self, out: &mut [u8]) {
        patch_len(out, self.0);
    }

    /// [`finish`](Self::finish), counting `lent` bytes written from
    /// elsewhere ([`Lent`]) beside `out`'s.
    pub(crate) fn finish_lent(self, out: &mut [u8], lent: usize) {
        let body = (out.len() - self.0 - LEN_PREFIX + lent) as u64;
        out[self.0..self.0 + LEN_PREFIX].copy_from_slice(&body.to_le_bytes());
    }
}

/// A started result frame, whose busy time is known only at the end.
#[must_use = "a started frame has no length until `finish`"]
pub(crate) struct StartedResult(usize);

impl StartedResult {
    /// Marks the frame as one whose descriptors went ahead ([`FDS`]).
    pub(crate) fn mark_fds(&self, out: &mut [u8]) {
        out[self.0 + LEN_PREFIX] |= FDS;
    }

    /// Writes the busy time and the length of the frame.
    pub(crate) fn finish(self, out: &mut [u8], busy_ns: u64) {
        self.finish_lent(out, busy_ns, 0);
    }

    /// [`finish`](Self::finish), counting `lent` bytes written from
    /// elsewhere ([`Lent`]) beside `out`'s.
    pub(crate) fn finish_lent(self, out: &mut [u8], busy_ns: u64, lent: usize) {
        let at = self.0 + LEN_PREFIX + 1 + 8;
        out[at..at + 8].copy_from_slice(&busy_ns.to_le_bytes());
        let body = (out.len() - self.0 - LEN_PREFIX + lent) as u64;
        out[self.0..self.0 + LEN_PREFIX].copy_from_slice(&body.to_le_bytes());
    }

    /// [`finish`](Self::finish) for a frame that carries `run` (its offset
    /// in `out`) apart: the frame is then `out[start..]` with its head
    /// replaced. Returns `start`, the head to write in its place, and where
    /// in `out` the bytes after the head begin.
    pub(crate) fn finish_with_run(
        self,
        out: &mut [u8],
        busy_ns: u64,
        run: RunAt,
        lent: usize,
    ) -> (usize, Vec<u8>, usize) {
        let start = self.0;
        self.finish_lent(out, busy_ns, lent);
        let from = start + LEN_PREFIX + ResultFrame::BODY_LEN;
        let head = run_head(
            &out[start..from],
            RunAt {
                at: run.at - start - LEN_PREFIX,
                ..run
            },
        );
        (start, head, from)
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
    body: Body,
    /// The descriptors of the buffers in the outcomes, in order (from the
    /// worker's side channel, [`crate::side`]), or why they are missing.
    pub(crate) fds: Result<VecDeque<PoolFd>, Error>,
    /// The worker sent descriptors for it ([`FDS`]).
    pub(crate) has_fds: bool,
}

/// A plain result body borrowed from the collector's read buffer (see
/// [`ResultFrame::parse_plain`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlainResult<'a> {
    /// The task it answers.
    pub(crate) id: u64,
    /// Nanoseconds the worker spent on the task.
    pub(crate) busy_ns: u64,
    body: &'a [u8],
}

impl PlainResult<'_> {
    /// The outcomes, one per item.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.body[ResultFrame::BODY_LEN..]
    }

    /// Its bytes in a frame of its own, with room for `more` bytes of
    /// payloads appended later ([`ResultFrame::extend_plain`]).
    pub(crate) fn to_frame(self, more: usize) -> ResultFrame {
        let mut bytes = Vec::with_capacity(self.body.len() + more);
        bytes.extend_from_slice(self.body);
        ResultFrame {
            id: self.id,
            busy_ns: self.busy_ns,
            body: bytes.into(),
            fds: Ok(VecDeque::new()),
            has_fds: false,
        }
    }

    /// Bytes of the whole body.
    pub(crate) fn len(&self) -> usize {
        self.body.len()
    }
}

impl ResultFrame {
    /// Body bytes before the payload: kind, id, busy nanoseconds.
    const BODY_LEN: usize = 1 + 2 * 8;

    /// Starts the result frame of task `id` in `out`; append the outcomes,
    /// then call [`StartedResult::finish`] with the busy time.
    pub(crate) fn begin(out: &mut Vec<u8>, id: u64) -> StartedResult {
        StartedResult(begin(out, RESULT, &[id, 0]))
    }

    /// The outcomes, one per item, to decode.
    pub(crate) fn payload(self) -> codec::Input {
        self.body.into_input(Self::BODY_LEN)
    }

    /// A *plain* result body (no run, no descriptors) read in place;
    /// `None` for any other body.
    pub(crate) fn parse_plain(body: &[u8]) -> Option<PlainResult<'_>> {
        (body.len() >= Self::BODY_LEN && body[0] == RESULT).then(|| PlainResult {
            id: field(body, 0),
            busy_ns: field(body, 1),
            body,
        })
    }

    /// Appends `payload` (another plain result's outcomes) to this frame's,
    /// if this frame is plain too; `false` (nothing appended) otherwise.
    pub(crate) fn extend_plain(&mut self, payload: &[u8]) -> bool {
        let plain =
            !self.has_fds && self.body.run.is_none() && self.body.bytes.first() == Some(&RESULT);
        if plain {
            self.body.bytes.extend_from_slice(payload);
        }
        plain
    }

    /// Bytes of its payload (the run's included).
    pub(crate) fn payload_len(&self) -> usize {
        self.body.bytes.len().saturating_sub(Self::BODY_LEN)
            + self.body.run.as_ref().map_or(0, |(_, r)| r.len())
    }

    /// The task id of a result frame still arriving, once its header bytes
    /// are in (`body` is what has arrived of the body).
    pub(crate) fn peek_id(body: &[u8]) -> Option<u64> {
        (body.first().map(|k| k & !FDS) == Some(RESULT) && body.len() > 8).then(|| field(body, 0))
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
    pub(crate) fn parse(body: Body) -> Result<FromWorker, String> {
        let run = body.run.is_some();
        let body_len = body.bytes.len() + body.run.as_ref().map_or(0, |(_, r)| r.len());
        let kind = body.bytes.first().copied();
        if run && kind.map(|k| k & !FDS) != Some(RESULT) {
            return Err(format!(
                "unexpected frame of kind {} ({body_len} bytes) carrying a run of numbers",
                kind.unwrap_or(0)
            ));
        }
        let bytes = &body.bytes;
        let has_fds = kind.is_some_and(|k| k & !FDS == RESULT && k & FDS != 0);
        match kind.map(|k| if has_fds { RESULT } else { k }) {
            Some(READY) if bytes.len() == 1 => Ok(FromWorker::Ready),
            Some(INIT_FAILED) => Ok(FromWorker::InitFailed(
                String::from_utf8_lossy(&bytes[1..]).into_owned(),
            )),
            Some(RESULT) if bytes.len() >= ResultFrame::BODY_LEN => {
                Ok(FromWorker::Result(ResultFrame {
                    id: field(bytes, 0),
                    busy_ns: field(bytes, 1),
                    body,
                    fds: Ok(VecDeque::new()),
                    has_fds,
                }))
            }
            Some(RESULT) => Err(format!(
                "a {body_len}-byte result frame is shorter than its {}-byte header",
                ResultFrame::BODY_LEN
            )),
            Some(kind) => Err(format!(
                "unexpected frame of kind {kind} ({body_len} bytes)"
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
            None => Ok(()),
            Some(&kind) if kind & !(RUN | FDS) == RESULT => Ok(()),
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
    #[error(
        "a frame of {body} bytes says it carries {len} bytes of {elem}-byte numbers at byte {at}, \
         which do not fit in it: the stream is corrupt"
    )]
    BadRun {
        body: u64,
        at: u64,
        len: u64,
        elem: u64,
    },
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
    /// A frame too big for `buf` (or carrying a run), being filled
    /// directly.
    big: Option<Big>,
}

/// A frame being read past the reader's buffer.
struct Big {
    /// The body so far, the run cut out.
    body: Vec<u8>,
    /// The body's length, the run cut out.
    want: usize,
    /// The run, and where it belongs in `body`.
    run: Option<(usize, RunBuf)>,
    /// Bytes the frame has on the wire (length prefix included).
    wire: usize,
}

impl Big {
    /// Whether the next bytes of the stream go into the run.
    fn run_next(&self) -> bool {
        self.run
            .as_ref()
            .is_some_and(|(at, r)| self.body.len() == *at && !r.full())
    }

    /// How many more bytes the body takes before the run or the end.
    fn body_room(&self) -> usize {
        match &self.run {
            Some((at, r)) if !r.full() => at - self.body.len(),
            _ => self.want - self.body.len(),
        }
    }

    fn done(&self) -> bool {
        self.body.len() == self.want && self.run.as_ref().is_none_or(|(_, r)| r.full())
    }

    /// Bytes of the frame received so far.
    fn got(&self) -> usize {
        let desc = if self.run.is_some() { RUN_DESC } else { 0 };
        LEN_PREFIX + desc + self.body.len() + self.run.as_ref().map_or(0, |(_, r)| r.got)
    }

    /// Takes what it can of `bytes` (already read); returns how much.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<usize, FrameError> {
        let whole = bytes.len();
        while !bytes.is_empty() && !self.done() {
            let n = if self.run_next() {
                self.run.as_mut().expect("run_next").1.feed(bytes)?
            } else {
                let n = bytes.len().min(self.body_room());
                self.body
                    .try_reserve(n)
                    .map_err(|_| FrameError::OutOfMemory {
                        len: self.want as u64,
                    })?;
                self.body.extend_from_slice(&bytes[..n]);
                n
            };
            bytes = &bytes[n..];
        }
        Ok(whole - bytes.len())
    }
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
        let (n, room) = match &mut self.big {
            Some(big) if big.run_next() => big.run.as_mut().expect("run_next").1.read_from(fd)?,
            Some(big) => {
                let limit = big.body_room();
                let body = &mut big.body;
                if body.capacity() == body.len() {
                    // Grow geometrically (at least GROW_STEP), never past
                    // what the body still takes.
                    let step = body.len().max(GROW_STEP).min(limit);
                    body.try_reserve_exact(step).map_err(|_| {
                        FillError::Frame(FrameError::OutOfMemory {
                            len: big.want as u64,
                        })
                    })?;
                }
                let room = body.spare_capacity_mut().len().min(limit);
                (read_spare(fd, body, limit).map_err(FillError::Io)?, room)
            }
            None => {
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                } else if self.buf.len() == self.buf.capacity() {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                let room = self.buf.spare_capacity_mut().len();
                (
                    read_spare(fd, &mut self.buf, usize::MAX).map_err(FillError::Io)?,
                    room,
                )
            }
        };
        Ok(match n {
            Some(0) => Fill::Eof,
            Some(n) if n == room => Fill::More,
            Some(_) => Fill::Drained,
            None => Fill::WouldBlock,
        })
    }

    /// The body of the next frame, borrowed from the buffer, if it is
    /// there whole, at most `max` bytes long and carries no run: read
    /// without a copy or an allocation (the collector's path for small
    /// results). Call [`skip`](Self::skip) with its length once used.
    pub(crate) fn peek_small(&self, max: usize) -> Option<&[u8]> {
        if self.big.is_some() {
            return None;
        }
        let avail = &self.buf[self.pos..];
        let len = u64::from_le_bytes(avail.get(..LEN_PREFIX)?.try_into().expect("8 bytes"));
        if len == 0 || len > max as u64 || avail.get(LEN_PREFIX)? & RUN != 0 {
            return None;
        }
        avail.get(LEN_PREFIX..LEN_PREFIX + len as usize)
    }

    /// Moves past the frame [`peek_small`](Self::peek_small) returned
    /// (`body_len`: its body's length).
    pub(crate) fn skip(&mut self, body_len: usize) {
        self.pos += LEN_PREFIX + body_len;
    }

    /// Parses the next complete frame's body, if one is buffered.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Body>, FrameError> {
        if let Some(big) = &self.big {
            if big.done() {
                let big = self.big.take().expect("checked");
                return Ok(Some(Body {
                    bytes: big.body,
                    run: big.run,
                }));
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
        if avail[LEN_PREFIX] & RUN != 0 {
            // A run travels apart: once its description is in, read the
            // rest into place.
            if have < 1 + RUN_DESC {
                return Ok(None);
            }
            let mut big = Self::split(&avail[LEN_PREFIX..LEN_PREFIX + 1 + RUN_DESC], len)?;
            let fed = big.feed(&avail[LEN_PREFIX + 1 + RUN_DESC..])?;
            self.pos += LEN_PREFIX + 1 + RUN_DESC + fed;
            self.big = Some(big);
            return self.next_frame();
        }
        if have >= len {
            let body = avail[LEN_PREFIX..LEN_PREFIX + len].to_vec();
            self.pos += LEN_PREFIX + len;
            return Ok(Some(body.into()));
        }
        if LEN_PREFIX + len > READ_BUF {
            // Too big for the buffer: move what we have into its own vector
            // and read the rest straight into it.
            let mut body = Vec::new();
            body.try_reserve_exact(len.min(have + GROW_STEP))
                .map_err(|_| FrameError::OutOfMemory { len: len as u64 })?;
            body.extend_from_slice(&avail[LEN_PREFIX..]);
            self.pos = self.buf.len();
            self.big = Some(Big {
                body,
                want: len,
                run: None,
                wire: LEN_PREFIX + len,
            });
        }
        Ok(None)
    }

    /// The frame being read, from the start of a body carrying a run (the
    /// kind byte and the run's description) and the body's length.
    fn split(head: &[u8], len: usize) -> Result<Big, FrameError> {
        let desc =
            |i: usize| u64::from_le_bytes(head[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        let (at, run_len, elem) = (desc(0), desc(1), desc(2));
        // The body without the description: the kind byte, the header and
        // payload with the run in them.
        let plain_len = (len as u64).saturating_sub(RUN_DESC as u64);
        let bad = FrameError::BadRun {
            body: plain_len,
            at,
            len: run_len,
            elem,
        };
        if at < 1 || at.checked_add(run_len).is_none_or(|end| end > plain_len) {
            return Err(bad);
        }
        let run = RunBuf::new(run_len as usize, elem as usize).ok_or(bad)?;
        let mut body = Vec::new();
        body.try_reserve_exact((at as usize).min(GROW_STEP))
            .map_err(|_| FrameError::OutOfMemory { len: len as u64 })?;
        body.push(head[0] & !RUN);
        Ok(Big {
            body,
            want: (plain_len - run_len) as usize,
            run: Some((at as usize, run)),
            wire: LEN_PREFIX + len,
        })
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
        match avail.get(LEN_PREFIX) {
            // Its header comes after the run's description.
            Some(kind) if kind & RUN != 0 => &avail[LEN_PREFIX..LEN_PREFIX + 1],
            Some(_) => &avail[LEN_PREFIX..],
            None => &[],
        }
    }

    /// The whole length (prefix included) of the frame being assembled, if
    /// its length prefix has arrived but not all of it.
    pub(crate) fn pending_len(&self) -> Option<usize> {
        if let Some(big) = &self.big {
            return Some(big.wire);
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
                expected: big.wire as u64,
                got: big.got() as u64,
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
    let n = read_raw(fd, spare.as_mut_ptr().cast(), want)?;
    if let Some(n) = n {
        // SAFETY: read(2) initialized the first `n` bytes of the spare
        // capacity.
        unsafe { buf.set_len(buf.len() + n) };
    }
    Ok(n)
}

/// One read(2) of at most `want` (> 0) bytes into `ptr`, retrying on
/// `EINTR`; `None` for `EAGAIN`. The caller owns `want` writable bytes at
/// `ptr`.
fn read_raw(fd: BorrowedFd<'_>, ptr: *mut u8, want: usize) -> io::Result<Option<usize>> {
    debug_assert!(want > 0);
    loop {
        // SAFETY: the caller owns `want` writable bytes at `ptr`; read(2)
        // writes at most `want` bytes there.
        let n = unsafe { libc::read(fd.as_raw_fd(), ptr.cast(), want) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// A frame to write: its bytes from `from` on, after `head` (a frame
/// carrying a run has a longer head than the room left for it, see
/// [`run_head`]); written with one vectored write, never assembled.
#[derive(Debug)]
pub(crate) struct OutFrame {
    head: Vec<u8>,
    bytes: Vec<u8>,
    from: usize,
    /// An argument written from its own memory, its bytes at its place in
    /// `bytes` ([`lend_into`]).
    lent: Option<Lent>,
}

impl From<Vec<u8>> for OutFrame {
    fn from(bytes: Vec<u8>) -> Self {
        OutFrame {
            head: Vec::new(),
            bytes,
            from: 0,
            lent: None,
        }
    }
}

impl OutFrame {
    /// The frame in `bytes` (its first `head_len` bytes its head: length
    /// prefix, kind, header fields), sent with `run` apart: `run.at` is the
    /// run's offset in `bytes`.
    pub(crate) fn with_run(bytes: Vec<u8>, head_len: usize, run: RunAt) -> Self {
        let head = run_head(
            &bytes[..head_len],
            RunAt {
                at: run.at - LEN_PREFIX,
                ..run
            },
        );
        OutFrame {
            head,
            bytes,
            from: head_len,
            lent: None,
        }
    }

    /// The frame as it goes on the wire, in one buffer (for tests).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.slices(0).flat_map(|s| s.to_vec()).collect()
    }

    /// The buffer holding the frame's bytes after its head (for tests).
    #[cfg(test)]
    pub(crate) fn bytes_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }

    /// The frame, with `lent`'s bytes written from its own memory at its
    /// place (its length prefix already counts them).
    pub(crate) fn lending(mut self, lent: Option<Lent>) -> Self {
        debug_assert!(lent.as_ref().is_none_or(|l| l.at >= self.from));
        self.lent = lent;
        self
    }

    /// Bytes on the wire.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.bytes.len() - self.from + self.lent.as_ref().map_or(0, |l| l.len)
    }

    /// The frame's bytes from `sent` on, as up to four slices.
    fn slices(&self, sent: usize) -> impl Iterator<Item = IoSlice<'_>> {
        let split = self.lent.as_ref().map_or(self.bytes.len(), |l| l.at);
        let parts: [&[u8]; 4] = [
            &self.head,
            &self.bytes[self.from..split],
            self.lent.as_ref().map_or(&[], |l| l.bytes()),
            &self.bytes[split..],
        ];
        let mut skip = sent;
        parts.into_iter().filter_map(move |p| {
            let n = skip.min(p.len());
            skip -= n;
            let p = &p[n..];
            (!p.is_empty()).then(|| IoSlice::new(p))
        })
    }
}

/// Frames waiting to be written to a non-blocking pipe.
#[derive(Default)]
pub(crate) struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    sent: usize,
}

impl OutQueue {
    pub(crate) fn push(&mut self, frame: impl Into<OutFrame>) {
        self.frames.push_back(frame.into());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// A buffer to append whole frames to, which then leave in one piece
    /// with it: the last frame's bytes if it has no head apart (no run)
    /// and holds under `limit` bytes, else a new, empty frame's. Cutting
    /// many small tasks into one buffer costs one allocation, not one each.
    pub(crate) fn tail(&mut self, limit: usize) -> &mut Vec<u8> {
        let reuse = self
            .frames
            .back()
            .is_some_and(|f| f.head.is_empty() && f.from == 0 && f.bytes.len() < limit);
        if !reuse {
            self.frames
                .push_back(Vec::with_capacity(limit.min(4096)).into());
        }
        &mut self.frames.back_mut().expect("just ensured").bytes
    }

    /// Writes as much as the pipe takes without blocking. `Ok(true)` when
    /// everything was written.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.frames.len().min(64));
            for (i, f) in self.frames.iter().take(64).enumerate() {
                let from = if i == 0 { self.sent } else { 0 };
                slices.extend(f.slices(from));
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
                    let done = self.frames.pop_front().expect("a frame was written");
                    keep_spare(done.bytes);
                    if let Some(lent) = done.lent {
                        lent.done();
                    }
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
pub(crate) fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    write_all_vectored(fd, &[buf])
}

/// Writes all of `parts`, in order, to a blocking descriptor with vectored
/// writes (retrying on `EINTR`).
pub(crate) fn write_all_vectored(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        // At most 1024 (IOV_MAX on Linux) slices a call.
        let slices: Vec<IoSlice<'_>> = parts[first..]
            .iter()
            .take(1024)
            .map(|p| IoSlice::new(p))
            .collect();
        let mut n = match nix::sys::uio::writev(fd, &slices) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        while n > 0 {
            let p = parts[first];
            if n >= p.len() {
                n -= p.len();
                first += 1;
            } else {
                parts[first] = &p[n..];
                n = 0;
            }
        }
    }
    Ok(())
}

/// Every frame body in `stream`, read through a real pipe by a
/// [`FrameReader`] (for tests).
#[cfg(test)]
pub(crate) fn read_frames(stream: Vec<u8>) -> Result<Vec<Body>, FrameError> {
    use std::os::fd::AsFd;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    let writer = std::thread::spawn(move || {
        let mut q = OutQueue::default();
        q.push(stream);
        while !q.flush(w.as_fd()).unwrap() {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    loop {
        while let Some(body) = reader.next_frame()? {
            out.push(body);
        }
        match reader.fill(r.as_fd()) {
            Ok(Fill::Eof) => break,
            Ok(Fill::WouldBlock) => std::thread::sleep(std::time::Duration::from_micros(20)),
            Ok(_) => {}
            Err(FillError::Frame(e)) => return Err(e),
            Err(FillError::Io(e)) => panic!("{e}"),
        }
    }
    writer.join().unwrap();
    match reader.partial() {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap()
    }

    /// A body with its run put back in place.
    fn joined(body: Body) -> Vec<u8> {
        let mut bytes = body.bytes;
        if let Some((at, run)) = body.run {
            bytes.splice(at..at, run.bytes().iter().copied());
        }
        bytes
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin(&mut out, kind, &[7, 8]);
        out.extend_from_slice(payload);
        patch_len(&mut out, start);
        out
    }

    /// Reads every frame `fd` delivers until EOF (bodies with their run, if
    /// any, put back in place).
    fn read_all(r: &OwnedFd) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        loop {
            while let Some(body) = reader.next_frame().unwrap() {
                out.push(joined(body));
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
        match FromWorker::parse(body.into()).unwrap() {
            FromWorker::Result(r) => {
                assert_eq!((r.id, r.busy_ns), (41, 1234));
                let mut p = r.payload();
                assert_eq!(p.len(), 8);
                assert_eq!(p.byte(), Some(b'o'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_frames_that_are_wrong_say_how() {
        assert!(matches!(
            FromWorker::parse(FromWorker::hello(None)[LEN_PREFIX..].to_vec().into()),
            Ok(FromWorker::Ready)
        ));
        match FromWorker::parse(
            FromWorker::hello(Some("no db"))[LEN_PREFIX..]
                .to_vec()
                .into(),
        ) {
            Ok(FromWorker::InitFailed(m)) => assert_eq!(m, "no db"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            FromWorker::parse(vec![RESULT, 1, 2].into()).unwrap_err(),
            "a 3-byte result frame is shorter than its 17-byte header"
        );
        assert_eq!(
            FromWorker::parse(vec![99, 0, 0].into()).unwrap_err(),
            "unexpected frame of kind 99 (3 bytes)"
        );
        assert!(FromWorker::pending_kind_ok(&[READY], true).is_err());
        assert!(FromWorker::pending_kind_ok(&[READY], false).is_ok());
        assert!(FromWorker::pending_kind_ok(&[RESULT, 1], true).is_ok());
    }

    #[test]
    fn only_results_marked_fds_send_the_parent_to_the_side_channel() {
        // What broke: the parent looked on the side channel for every
        // result (a failing `recvmsg` per tiny task); a worker now marks the
        // results whose descriptors it sent.
        let mut out = Vec::new();
        let plain = ResultFrame::begin(&mut out, 5);
        plain.finish(&mut out, 9);
        let at = out.len();
        let marked = ResultFrame::begin(&mut out, 6);
        marked.mark_fds(&mut out);
        marked.finish(&mut out, 9);
        let parse = |bytes: &[u8]| match FromWorker::parse(bytes[LEN_PREFIX..].to_vec().into()) {
            Ok(FromWorker::Result(r)) => (r.id, r.has_fds),
            other => panic!("{other:?}"),
        };
        assert_eq!(parse(&out[..at]), (5, false));
        assert_eq!(parse(&out[at..]), (6, true));
        assert_eq!(ResultFrame::peek_id(&out[at + LEN_PREFIX..]), Some(6));
        assert!(FromWorker::pending_kind_ok(&out[at + LEN_PREFIX..], true).is_ok());
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
                break joined(b);
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
            assert!(reader.next_frame().unwrap().is_none());
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

    /// A RESULT frame of `payload` (after the id and busy fields), sent with
    /// `payload[run_at..run_at + run_len]` apart as `elem`-byte numbers.
    /// Fills `run` from a pipe written in pieces of `piece` bytes (so the
    /// run arrives over many reads), then takes it as a `Vec<f64>`.
    fn fill_from_pipe(mut run: RunBuf, bytes: &[u8], piece: usize) -> Vec<f64> {
        let (r, w) = pipe();
        let data = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            for part in data.chunks(piece) {
                write_all_blocking(w.as_fd(), part);
            }
        });
        let mut reads = 0;
        while !run.full() {
            match run.read_from(r.as_fd()) {
                Ok((Some(0), _)) => panic!("the writer closed early"),
                Ok((Some(_), _)) => reads += 1,
                Ok((None, _)) => std::thread::sleep(std::time::Duration::from_micros(50)),
                Err(FillError::Io(e)) => panic!("{e}"),
                Err(FillError::Frame(e)) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        assert!(reads > 1, "the run arrived in one read");
        run.into_vec::<f64>().expect("a whole run of f64s")
    }

    /// Writes all of `buf` to a non-blocking pipe, waiting while it is full.
    fn write_all_blocking(fd: BorrowedFd<'_>, mut buf: &[u8]) {
        while !buf.is_empty() {
            match nix::unistd::write(fd, buf) {
                Ok(n) => buf = &buf[n..],
                Err(nix::errno::Errno::EAGAIN) => {
                    std::thread::sleep(std::time::Duration::from_micros(50))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_run_received_into_recycled_memory_is_intact_whatever_the_sizes() {
        let n = 300_000; // 2.4 MB of f64s
        let want: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 7.0).collect();
        let bytes: Vec<u8> = want.iter().flat_map(|x| x.to_le_bytes()).collect();
        // A spare bigger than the run (cut down in place), one as big: the
        // same memory is read into, and the `Vec` taken over is whole and
        // right.
        for spare_len in [3 * n, n] {
            let spare = Spare::of_vec(vec![9.0f64; spare_len]).expect("big enough to keep");
            let addr = spare.ptr.as_ptr() as usize;
            let mut run = RunBuf::new(bytes.len(), 8).unwrap();
            assert!(run.adopt(spare).is_ok(), "spare of {spare_len} f64s");
            assert_eq!(
                run.ptr.as_ptr() as usize,
                addr,
                "read into the spare itself"
            );
            let got = fill_from_pipe(run, &bytes, 40_000);
            assert_eq!(got, want, "spare of {spare_len} f64s");
            assert_eq!(got.capacity(), n);
        }
        // A spare smaller than the run but not than the first step the run
        // takes: read into, then grown past.
        let big_n = GROW_STEP / 8 + 500_000;
        let big: Vec<f64> = (0..big_n).map(|i| i as f64 + 0.25).collect();
        let big_bytes: Vec<u8> = big.iter().flat_map(|x| x.to_le_bytes()).collect();
        let spare = Spare::of_vec(vec![9.0f64; GROW_STEP / 8 + 1]).unwrap();
        let mut run = RunBuf::new(big_bytes.len(), 8).unwrap();
        assert!(run.adopt(spare).is_ok());
        assert_eq!(run.cap, GROW_STEP + 8);
        assert_eq!(fill_from_pipe(run, &big_bytes, 1 << 20), big);
        // A spare of another alignment, or too small to be worth it, is
        // handed back untouched; the run allocates its own memory.
        let bytes_spare = Spare::of_vec(vec![1u8; 4 * bytes.len()]).unwrap();
        let mut run = RunBuf::new(bytes.len(), 8).unwrap();
        let back = run
            .adopt(bytes_spare)
            .expect_err("a u8 allocation for f64s");
        assert_eq!((back.align, back.cap), (1, 4 * bytes.len()));
        assert_eq!(fill_from_pipe(run, &bytes, 40_000), want);
        let tiny = Spare::of_vec(vec![0.0f64; codec::RUN_MIN / 8]).unwrap();
        let mut run = RunBuf::new(bytes.len(), 8).unwrap();
        assert!(run.adopt(tiny).is_err(), "smaller than a first step");
        assert_eq!(fill_from_pipe(run, &bytes, 40_000), want);
        // Vectors too small to be a run, or of no plain type, are not kept.
        assert!(Spare::of_vec(vec![0u8; codec::RUN_MIN - 1]).is_none());
    }

    #[test]
    fn only_a_big_vec_of_plain_numbers_is_lent_and_only_inside_with_lending() {
        let v: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let addr = v.as_ptr() as usize;
        let mut out = vec![7u8; 5];
        let mut run = None;
        // Outside a worker's task: given back.
        let v = lend(v, &mut out, &mut run).expect_err("no lending outside with_lending");
        assert_eq!((out.len(), run), (5, None));
        let mut lent = Vec::new();
        with_lending(&mut lent, || {
            // Too small, or not a `Vec` of plain numbers: given back.
            let small = vec![1u64; 100];
            assert_eq!(lend(small, &mut out, &mut run).unwrap_err().len(), 100);
            let s = "x".repeat(1 << 20);
            assert_eq!(lend(s, &mut out, &mut run).unwrap_err().len(), 1 << 20);
            assert!(lend(v, &mut out, &mut run).is_ok());
        });
        // Its length went to the output, its numbers stayed where they were.
        assert_eq!(&out[5..], &100_000u64.to_le_bytes());
        assert_eq!(lent.len(), 1);
        assert_eq!(lent[0].at, 13);
        assert_eq!(lent[0].bytes().as_ptr() as usize, addr, "not copied");
        assert_eq!(lent[0].bytes()[4..8], 1.0f32.to_le_bytes());
        assert_eq!(
            run,
            Some(RunAt {
                at: 13,
                len: 400_000,
                elem: 4
            })
        );
        let parts = with_lent(&out, 2, &lent);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], &out[2..13]);
        assert_eq!(parts[2], &[] as &[u8]);
        lent.into_iter().for_each(Lent::done);
    }

    fn run_frame(payload: &[u8], run_at: usize, run_len: usize, elem: usize) -> OutFrame {
        let mut out = Vec::new();
        let started = ResultFrame::begin(&mut out, 5);
        let base = out.len();
        out.extend_from_slice(payload);
        let (start, head, from) = started.finish_with_run(
            &mut out,
            77,
            RunAt {
                at: base + run_at,
                len: run_len,
                elem,
            },
            0,
        );
        assert_eq!(start, 0);
        OutFrame {
            head,
            bytes: out,
            from,
            lent: None,
        }
    }

    #[test]
    fn a_run_travels_apart_into_its_own_aligned_memory() {
        let payload: Vec<u8> = (0..3_000_017u32).map(|i| (i % 253) as u8).collect();
        let (at, len) = (1001, 2_400_000);
        let f = run_frame(&payload, at, len, 8);
        assert_eq!(f.len(), f.to_vec().len());
        assert_eq!(f.to_vec()[LEN_PREFIX], RESULT | RUN);
        // Two frames in a row, the second after the first's run: both whole.
        let mut stream = f.to_vec();
        stream.extend(f.to_vec());
        let bodies = read_frames(stream).unwrap();
        assert_eq!(bodies.len(), 2);
        for body in bodies {
            let (run_at, run) = body.run.as_ref().unwrap();
            assert_eq!(*run_at, ResultFrame::BODY_LEN + at);
            assert_eq!(run.bytes(), &payload[at..at + len]);
            assert_eq!(
                run.bytes().as_ptr() as usize % 8,
                0,
                "aligned for its numbers"
            );
            assert_eq!(body.bytes[0], RESULT);
            assert_eq!(
                &body.bytes[ResultFrame::BODY_LEN..ResultFrame::BODY_LEN + at],
                &payload[..at]
            );
            assert_eq!(
                &body.bytes[ResultFrame::BODY_LEN + at..],
                &payload[at + len..]
            );
            match FromWorker::parse(body).unwrap() {
                FromWorker::Result(r) => assert_eq!((r.id, r.busy_ns), (5, 77)),
                other => panic!("{other:?}"),
            }
        }
        // A small run, all of it in the reader's buffer at once.
        let small = run_frame(&payload[..300], 10, 256, 16);
        let bodies = read_frames(small.to_vec()).unwrap();
        assert_eq!(bodies[0].run.as_ref().unwrap().1.bytes(), &payload[10..266]);
    }

    #[test]
    fn a_run_frame_cut_short_is_reported_with_byte_counts() {
        let payload = vec![3u8; 400_000];
        let f = run_frame(&payload, 100, 300_000, 4).to_vec();
        // Cut in the head, in the run, and in the bytes after it.
        for cut in [20, LEN_PREFIX + 1 + RUN_DESC + 50, 200_000, f.len() - 1] {
            let e = read_frames(f[..cut].to_vec()).unwrap_err();
            assert_eq!(
                e,
                FrameError::Truncated {
                    expected: f.len() as u64,
                    got: cut as u64
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_run_that_does_not_fit_its_frame_is_an_error() {
        let good = run_frame(&[1u8; 1000], 8, 512, 8).to_vec();
        let desc_at = LEN_PREFIX + 1;
        for (field, value) in [
            (0, 0u64),     // run at the kind byte
            (0, 1000),     // run past the body
            (1, u64::MAX), // length overflows
            (1, 5000),     // longer than the body
            (2, 3),        // not a number size
            (2, 1024),     // not a number size
        ] {
            let mut f = good.clone();
            let at = desc_at + 8 * field;
            f[at..at + 8].copy_from_slice(&value.to_le_bytes());
            match read_frames(f) {
                Err(FrameError::BadRun { .. }) => {}
                other => panic!("field {field} = {value}: {other:?}"),
            }
        }
        // An odd length for 8-byte numbers.
        let mut f = good.clone();
        f[desc_at + 8..desc_at + 16].copy_from_slice(&511u64.to_le_bytes());
        assert!(matches!(read_frames(f), Err(FrameError::BadRun { .. })));
        // A run on a frame that cannot have one.
        let body = Body {
            bytes: vec![READY],
            run: Some((1, RunBuf::copy_of(&[1; 8], 8).unwrap())),
        };
        assert!(
            FromWorker::parse(body)
                .unwrap_err()
                .contains("carrying a run")
        );
    }

    #[test]
    fn a_run_frame_still_arriving_shows_its_kind_and_header() {
        let f = run_frame(&[1u8; 200_000], 16, 150_000, 1).to_vec();
        let (r, w) = pipe();
        let mut reader = FrameReader::default();
        // Only the kind byte with the run bit: a result, no header yet.
        write_all(w.as_fd(), &f[..LEN_PREFIX + 4]).unwrap();
        reader.fill(r.as_fd()).unwrap();
        assert!(reader.next_frame().unwrap().is_none());
        assert_eq!(reader.pending_body(), &[RESULT | RUN]);
        assert!(FromWorker::pending_kind_ok(reader.pending_body(), true).is_ok());
        assert_eq!(ResultFrame::peek_id(reader.pending_body()), None);
        // The description and header in: the header is readable.
        write_all(
            w.as_fd(),
            &f[LEN_PREFIX + 4..LEN_PREFIX + 1 + RUN_DESC + 20],
        )
        .unwrap();
        reader.fill(r.as_fd()).unwrap();
        assert!(reader.next_frame().unwrap().is_none());
        assert_eq!(ResultFrame::peek_id(reader.pending_body()), Some(5));
        assert_eq!(reader.pending_len(), Some(f.len()));
    }

    #[test]
    fn corrupt_lengths_are_errors_not_allocations() {
        for len in [0u64, MAX_BODY + 1, u64::MAX] {
            let (r, w) = pipe();
            write_all(w.as_fd(), &len.to_le_bytes()).unwrap();
            let mut reader = FrameReader::default();
            reader.fill(r.as_fd()).unwrap();
            assert_eq!(
                reader.next_frame().err(),
                Some(FrameError::BadLength { len, max: MAX_BODY })
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
