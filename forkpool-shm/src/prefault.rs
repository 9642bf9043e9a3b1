//! Pre-faulting: mapping a range of pages in bulk before a hot loop, and
//! populating a new array's pages on several threads at once.
//!
//! Forking with a `MAP_SHARED` array copies no page tables, so every process
//! takes a minor fault per 4 KiB page the first time it touches each page
//! (transparent huge pages are off for shared memory on this machine).
//! Measured here: mapping reserved pages fault by fault while filling runs at
//! about 3.5 GB/s, `madvise(MADV_POPULATE_WRITE)` maps them at 6.7 GB/s, and
//! the fill then runs at memory bandwidth (21-27 GB/s); end to end, a fresh
//! worker fills its rows 1.5 times as fast when it pre-faults them first
//! (`benches/fill.rs`).
//!
//! A new anonymous array is *populated* when it is made: every page is
//! allocated, zeroed and mapped by `MADV_POPULATE_WRITE`, the range cut into
//! disjoint, page-aligned pieces, one per thread ([`populate`]). Allocating
//! and zeroing pages is the dearest part of a first touch, and unlike a
//! single `fallocate` (which holds the file's lock) it runs on every core.
//! An array made with a value ([`SharedArray::full`](crate::SharedArray::full))
//! is filled in the same pass: each thread populates [`FILL_CHUNK`] bytes,
//! then writes the value over them while the kernel's freshly zeroed lines
//! are still in its cache, so the memory is written once rather than zeroed
//! in one pass and filled in another.
//!
//! `MADV_POPULATE_READ`/`_WRITE` exist since Linux 5.14. On older kernels
//! (`EINVAL`) we fall back to touching one element per page, atomically and
//! without changing it, which costs the faults but still takes them up front.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{MmapAdvise, madvise};

use crate::error::ShmError;
use crate::region::page_size;

/// Whether pages are pre-faulted for reading or for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Map the pages readable (for a file mapping: read them from disk).
    Read,
    /// Map the pages writable (for a file mapping this marks them dirty).
    Write,
}

/// Pre-faults the pages holding bytes `[ptr, ptr + len)`.
///
/// `ptr` must point into a live mapping holding all of `[ptr, ptr + len)`,
/// aligned to `elem_size`, with `len` a multiple of `elem_size`.
pub(crate) fn prefault(
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
    elem_size: usize,
) -> Result<(), ShmError> {
    let page = page_size();
    let start = ptr.as_ptr() as usize & !(page - 1);
    let end = (ptr.as_ptr() as usize + len).next_multiple_of(page);
    let advice = match access {
        Access::Read => MmapAdvise::MADV_POPULATE_READ,
        Access::Write => MmapAdvise::MADV_POPULATE_WRITE,
    };
    loop {
        // SAFETY: `[start, end)` is `[ptr, ptr + len)` widened to whole pages,
        // all of which belong to the mapping (mappings are whole pages).
        // Populating changes no data, only page tables.
        let result = unsafe {
            madvise(
                NonNull::new(start as *mut libc::c_void).expect("mapping at address 0"),
                end - start,
                advice,
            )
        };
        return match result {
            Ok(()) => Ok(()),
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            // Linux before 5.14 does not know these advices.
            Err(Errno::EINVAL) => {
                // SAFETY: forwarded from this function's own requirements.
                unsafe { touch_pages(ptr, len, access, elem_size) };
                Ok(())
            }
            Err(source) => Err(ShmError::Os {
                call: match access {
                    Access::Read => "madvise(MADV_POPULATE_READ)",
                    Access::Write => "madvise(MADV_POPULATE_WRITE)",
                },
                cause: source,
            }),
        };
    }
}

/// Touches one element in every page of `[ptr, ptr + len)`: an atomic load
/// for `Read`, an atomic `fetch_or(0)` (a write that changes nothing) for
/// `Write`, using an atomic of the element's own size.
///
/// # Safety
///
/// `ptr` points into a live mapping holding all of `[ptr, ptr + len)`, aligned
/// to `elem_size` (1, 2, 4 or 8), and `len` is a multiple of `elem_size`; the
/// memory is only ever accessed atomically with that size (or under a
/// contract excluding other access while this runs).
pub(crate) unsafe fn touch_pages(ptr: NonNull<u8>, len: usize, access: Access, elem_size: usize) {
    use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};
    let page = page_size();
    let base = ptr.as_ptr() as usize;
    let mut at = base;
    while at < base + len {
        let p = at as *mut u8;
        // SAFETY: `p` lies in `[ptr, ptr + len)` and is aligned to `elem_size`
        // (it is `ptr` or a page boundary, and pages are multiples of every
        // element size); the caller promises atomic access of that size.
        unsafe {
            match (elem_size, access) {
                (1, Access::Read) => drop(AtomicU8::from_ptr(p).load(Relaxed)),
                (1, Access::Write) => drop(AtomicU8::from_ptr(p).fetch_or(0, Relaxed)),
                (2, Access::Read) => drop(AtomicU16::from_ptr(p.cast()).load(Relaxed)),
                (2, Access::Write) => drop(AtomicU16::from_ptr(p.cast()).fetch_or(0, Relaxed)),
                (4, Access::Read) => drop(AtomicU32::from_ptr(p.cast()).load(Relaxed)),
                (4, Access::Write) => drop(AtomicU32::from_ptr(p.cast()).fetch_or(0, Relaxed)),
                (_, Access::Read) => drop(AtomicU64::from_ptr(p.cast()).load(Relaxed)),
                (_, Access::Write) => drop(AtomicU64::from_ptr(p.cast()).fetch_or(0, Relaxed)),
            }
        }
        at = (at & !(page - 1)) + page;
    }
}

/// The least a thread populates: below this, starting a thread costs more
/// than it saves (a thread is about 20 µs; 32 MiB of new pages take
/// 10-30 ms).
const MIN_PER_THREAD: usize = 32 << 20;

/// Where the threads' pieces may start: on huge-page boundaries (2 MiB on
/// x86-64 and arm64 with 4 KiB pages), so that where shared memory gets
/// transparent huge pages no two threads populate the same huge page.
const PIECE_ALIGN: usize = 2 << 20;

/// How many bytes a thread populates before filling them, in
/// [`populate`] with a fill: small enough that the pages the kernel has
/// just zeroed are still in the core's cache when they are filled (L2 holds
/// 1-4 MiB on current servers), large enough that the `madvise` calls
/// cost nothing (one per 256 KiB).
pub(crate) const FILL_CHUNK: usize = 256 << 10;

/// How many threads populate `len` bytes: one per core this process may
/// run on, but none with less than [`MIN_PER_THREAD`] to do.
pub(crate) fn populate_threads(len: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cores.min(len / MIN_PER_THREAD).max(1)
}

/// Cuts bytes `[0, len)` into at most `parts` contiguous, disjoint pieces
/// that start on page boundaries (`page` a power of two), covering all of
/// them; the last may end mid-page. Empty for `len == 0`.
pub(crate) fn page_pieces(len: usize, parts: usize, page: usize) -> Vec<(usize, usize)> {
    let pages = len.div_ceil(page);
    let per = pages.div_ceil(parts.max(1)).max(1);
    (0..pages)
        .step_by(per)
        .map(|first| (first * page, ((first + per) * page).min(len)))
        .collect()
}

/// Runs `work(start, len)` over [`page_pieces`] of `[0, len)`, each piece
/// on its own scoped thread (the first on the calling thread), and returns
/// the first error. A thread that cannot be started leaves its piece to
/// the calling thread. Every thread is joined before this returns, so a
/// process that was single-threaded is so again afterwards (it may fork).
pub(crate) fn on_threads<E: Send>(
    len: usize,
    threads: usize,
    work: impl Fn(usize, usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let pieces = page_pieces(len, threads, PIECE_ALIGN.max(page_size()));
    let Some((&(first_start, first_end), rest)) = pieces.split_first() else {
        return Ok(());
    };
    let work = &work;
    std::thread::scope(|scope| {
        let mut inline = vec![(first_start, first_end)];
        let mut handles = Vec::with_capacity(rest.len());
        for &(start, end) in rest {
            // An explicit stack size: `spawn` would otherwise read
            // `RUST_MIN_STACK` under std's environment lock, which a forked
            // child must not take (DESIGN.md, "No lock after fork").
            match std::thread::Builder::new()
                .name("forkpool-shm populate".into())
                .stack_size(64 << 10)
                .spawn_scoped(scope, move || work(start, end - start))
            {
                Ok(handle) => handles.push(handle),
                Err(_) => inline.push((start, end)),
            }
        }
        let mut result = Ok(());
        for (start, end) in inline {
            if let Err(e) = work(start, end - start) {
                result = result.and(Err(e));
            }
        }
        for handle in handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(outcome);
        }
        result
    })
}

/// Populates the pages of the new mapping `[ptr, ptr + len)` for writing:
/// `madvise(MADV_POPULATE_WRITE)` over disjoint pieces, on `threads`
/// threads at once. For a memfd this allocates the pages that are not
/// allocated yet, zeroes them, and maps them into this process.
///
/// With `fill`, each thread populates its piece [`FILL_CHUNK`] bytes at a
/// time and calls `fill(start, len)` on each chunk (byte offsets from
/// `ptr`, page-aligned starts) right after populating it, while its pages
/// are still in the cache.
///
/// # Errors
///
/// The `madvise` error: `EINVAL` on kernels before 5.14 (nothing was
/// done; see [`touch_in_parallel`]); `ENOMEM` when memory ran out
/// (`EFAULT` when the file could not grow): some pages may be allocated,
/// which dropping the mapping and the file frees.
pub(crate) fn populate(
    ptr: NonNull<u8>,
    len: usize,
    threads: usize,
    fill: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<(), Errno> {
    let base = ptr.as_ptr() as usize;
    debug_assert!(base.is_multiple_of(page_size()), "populate a whole mapping");
    let populate_write = |start: usize, len: usize| {
        let piece = NonNull::new((base + start) as *mut libc::c_void).expect("inside the mapping");
        loop {
            // SAFETY: the piece is inside the mapping `[ptr, ptr + len)`,
            // which the caller keeps alive, and starts on a page boundary.
            // Populating changes no data, only page tables (and allocates
            // zeroed pages for a memfd's holes).
            match unsafe { madvise(piece, len, MmapAdvise::MADV_POPULATE_WRITE) } {
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                other => return other,
            }
        }
    };
    on_threads(len, threads, |start, len| match fill {
        None => populate_write(start, len),
        Some(fill) => {
            for chunk in (start..start + len).step_by(FILL_CHUNK) {
                let chunk_len = FILL_CHUNK.min(start + len - chunk);
                populate_write(chunk, chunk_len)?;
                fill(chunk, chunk_len);
            }
            Ok(())
        }
    })
}

/// Asks for transparent huge pages on `[ptr, ptr + len)`
/// (`madvise(MADV_HUGEPAGE)`): where the system allows them for shared
/// memory (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` at
/// `advise`, `within_size` or `always`), the kernel then allocates, zeroes
/// and maps the array 2 MiB at a time, 512 times fewer pages to populate
/// and to fault in every process. Where it does not (`never`, the default
/// of many distributions), this changes nothing. Best effort: an error
/// (a kernel without transparent huge pages) is ignored.
pub(crate) fn advise_huge_pages(ptr: NonNull<u8>, len: usize) {
    // SAFETY: `[ptr, ptr + len)` is a whole mapping the caller keeps alive;
    // the advice changes how pages are allocated, never their contents.
    let _ = unsafe { madvise(ptr.cast(), len, MmapAdvise::MADV_HUGEPAGE) };
}

/// [`touch_pages`] for writing over `[ptr, ptr + len)` on `threads`
/// threads at once, in disjoint pieces: the fallback of [`populate`] on
/// kernels before 5.14.
///
/// # Safety
///
/// As for [`touch_pages`] with `Access::Write`, and `ptr` is page-aligned.
pub(crate) unsafe fn touch_in_parallel(
    ptr: NonNull<u8>,
    len: usize,
    elem_size: usize,
    threads: usize,
) {
    let base = ptr.as_ptr() as usize;
    let _ = on_threads(len, threads, |start, len| {
        let piece = NonNull::new((base + start) as *mut u8).expect("inside the mapping");
        // SAFETY: the piece lies inside `[ptr, ptr + len)` and starts on a
        // page boundary (aligned to every element size); the caller's
        // promise covers the rest.
        unsafe { touch_pages(piece, len, Access::Write, elem_size) };
        Ok::<(), ()>(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `map` present in this process's page tables (bit 63 of each
    /// `/proc/self/pagemap` entry): what a fault would have to map.
    fn mapped_pages(map: &memmap2::MmapMut) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let page = page_size();
        let pages = map.len().div_ceil(page);
        let mut file = std::fs::File::open("/proc/self/pagemap").unwrap();
        file.seek(SeekFrom::Start((map.as_ptr() as usize / page * 8) as u64))
            .unwrap();
        let mut entries = vec![0u8; pages * 8];
        file.read_exact(&mut entries).unwrap();
        entries
            .chunks_exact(8)
            .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) >> 63 == 1)
            .count()
    }

    fn fresh_shared_map(pages: usize) -> memmap2::MmapMut {
        let len = (pages * page_size()) as u64;
        let file = crate::memfd::create_reserved("forkpool-shm-test", len).unwrap();
        // SAFETY: the memfd is private to this test.
        unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore = "madvise, /proc/self/pagemap")]
    fn madvise_and_the_fallback_both_fault_pages_in_without_changing_data() {
        let page = page_size();
        for use_fallback in [false, true] {
            let mut map = fresh_shared_map(64);
            let ptr = NonNull::new(map.as_mut_ptr()).unwrap();
            // SAFETY: a live mapping of 64 pages, private to this test; the
            // pointer is page-aligned; we write one byte before touching.
            unsafe { ptr.add(8 * page + 5).write(42) };
            let before = mapped_pages(&map);
            // Pages 8..40 (of u64 elements), starting in the middle of page 8.
            let (start, len) = (8 * page + 8, 32 * page - 8);
            // SAFETY: inside the mapping, aligned to 8, length a multiple of 8.
            let inner = unsafe { ptr.add(start) };
            if use_fallback {
                // SAFETY: as above; nothing else accesses the memory.
                unsafe { touch_pages(inner, len, Access::Write, 8) };
            } else {
                prefault(inner, len, Access::Write, 8).unwrap();
            }
            let after = mapped_pages(&map);
            assert_eq!(
                before, 1,
                "fallback={use_fallback}: only the written page is mapped"
            );
            assert_eq!(after, 32, "fallback={use_fallback}: pages 8..40 are mapped");
            // SAFETY: as above.
            assert_eq!(unsafe { ptr.add(8 * page + 5).read() }, 42);
        }
    }

    #[test]
    fn page_pieces_are_disjoint_page_aligned_and_cover_everything() {
        let page = 4096;
        for (len, parts) in [
            (0, 3),
            (1, 3),
            (page, 4),
            (10 * page + 8, 3),
            (10 * page, 10),
            (10 * page, 16),
            (1000 * page - 8, 7),
        ] {
            let pieces = page_pieces(len, parts, page);
            assert!(pieces.len() <= parts, "{len} {parts}: {pieces:?}");
            let mut at = 0;
            for &(start, end) in &pieces {
                assert_eq!(start, at, "{len} {parts}: {pieces:?}");
                assert!(start.is_multiple_of(page) && start < end);
                at = end;
            }
            assert_eq!(at, len, "{len} {parts}: {pieces:?}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "madvise, /proc/self/pagemap")]
    fn populating_on_several_threads_maps_every_page_of_a_new_memfd() {
        for threads in [1, 3] {
            let len = 64 * page_size();
            let file = crate::memfd::create("forkpool-shm-test", len as u64).unwrap();
            // SAFETY: the memfd is private to this test.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
            assert_eq!(mapped_pages(&map), 0);
            let ptr = NonNull::new(map.as_mut_ptr()).unwrap();
            populate(ptr, len, threads, None).unwrap();
            assert_eq!(mapped_pages(&map), 64, "{threads} threads");
            // Allocated in the file, and zero.
            use std::os::unix::fs::MetadataExt;
            assert!(file.metadata().unwrap().blocks() * 512 >= len as u64);
            assert!(map.iter().all(|&b| b == 0));
        }
    }

    /// Minor page faults taken by this thread so far.
    fn minor_faults() -> i64 {
        use nix::sys::resource::{UsageWho, getrusage};
        getrusage(UsageWho::RUSAGE_THREAD)
            .unwrap()
            .minor_page_faults()
    }

    #[test]
    #[cfg_attr(miri, ignore = "75 MB, getrusage")]
    fn full_fills_every_element_on_every_thread_and_chunk_and_keeps_the_header() {
        // 75.5 MB of u32: two populating threads on two cores (at least 32
        // MiB each), hundreds of chunks, a last chunk that ends mid-page.
        let shape = [9, (1 << 21) + 1];
        assert!(
            populate_threads(9 * ((1 << 21) + 1) * 4)
                >= 2.min(std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
        );
        let array = crate::SharedArray::<u32>::full(&shape, 0xdead_beef).unwrap();
        assert_eq!(array.shape(), shape);
        let wrong = array.iter().filter(|&x| x != 0xdead_beef).count();
        assert_eq!(wrong, 0, "elements not set by full");
        // The header (the page before the data) was left alone.
        use crate::Element;
        assert!(array.region().header().describes(u32::NPY_DESCR, &shape));
        // And the fill took the array's pages: none left to fault.
        let before = minor_faults();
        array.fill(1);
        assert!(minor_faults() - before < 64);
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc/meminfo")]
    fn full_refuses_an_array_larger_than_memory_before_allocating() {
        let room = crate::available_memory().unwrap().bytes.as_u64();
        let too_big = (room / 8 + (1 << 30)) as usize;
        let err = crate::SharedArray::<f64>::full(&[too_big], 42.0).unwrap_err();
        assert!(
            matches!(err, crate::ShmError::OutOfMemory { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn full_of_tiny_and_empty_shapes() {
        let one = crate::SharedArray::<f64>::full(&[1], 42.0).unwrap();
        assert_eq!(one.to_vec().unwrap(), [42.0]);
        let empty = crate::SharedArray::<i8>::full(&[0, 5], -1).unwrap();
        assert!(empty.is_empty());
        let odd = crate::SharedArray::<u16>::full(&[3, 1001], 7).unwrap();
        assert!(odd.iter().all(|x| x == 7));
    }

    #[test]
    #[cfg_attr(miri, ignore = "madvise, /proc/self/pagemap")]
    fn a_fill_after_creation_takes_no_page_faults() {
        // 16 MiB: 4096 pages, each a fault if creation left them unmapped.
        let array = crate::SharedArray::<f64>::new(&[256, 8192]).unwrap();
        let before = minor_faults();
        array.fill(42.0);
        let faults = minor_faults() - before;
        assert!(
            faults < 64,
            "filling a new 16 MiB array took {faults} page faults: creation did not populate it"
        );
        assert_eq!(array.get(array.len() - 1), 42.0);
    }
}
