//! Pre-faulting: mapping a range of pages in bulk before a hot loop.
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
//! `MADV_POPULATE_READ`/`_WRITE` exist since Linux 5.14. On older kernels
//! (`EINVAL`) we fall back to touching one element per page, atomically and
//! without changing it, which costs the faults but still takes them up front.

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
}
