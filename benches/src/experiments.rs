//! Prototypes of what would close the gaps the benchmarks show, measured in
//! the same runs (RESULTS.md cites them). None of this is forkpool's API.
//!
//! - [`LazyShared`] and [`random_parallel_lazy`]: a shared array whose pages
//!   are *not* reserved up front, so each worker allocates its own rows (in
//!   bulk, `MADV_POPULATE_WRITE`) in parallel, instead of the parent
//!   reserving them all, serially, in `SharedArray::new`.
//! - [`fill_nontemporal`]: filling with non-temporal (streaming) stores, as
//!   glibc's `memset` does for large sizes, against ordinary stores
//!   ([`fill_regular`], what `slice::fill` and `SharedArray::fill_rows`
//!   compile to), which first read every cache line they write.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forkpool::Pool;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap, munmap};

use crate::arrays::{ROW, rows_for};
use crate::random::fill_row;

/// A `MAP_SHARED` memfd mapping of `f64`s whose pages are allocated only
/// when first touched (no `fallocate`): every process forked after its
/// creation shares it.
#[derive(Debug)]
pub struct LazyShared {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; who may read or write which
// part of it is up to the users of the raw pointer (see `rows_mut`).
unsafe impl Send for LazyShared {}
// SAFETY: as for `Send`: `&LazyShared` gives out nothing but the address.
unsafe impl Sync for LazyShared {}

impl LazyShared {
    /// Maps `len` bytes (a multiple of the page size) of a new memfd.
    ///
    /// # Panics
    ///
    /// If a system call fails.
    pub fn new(len: usize) -> LazyShared {
        let fd = memfd_create(c"forkpool-bench-lazy", MFdFlags::MFD_CLOEXEC).expect("memfd");
        nix::unistd::ftruncate(&fd, len as i64).expect("ftruncate");
        // SAFETY: a new shared mapping of a file we own; nothing aliases it.
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).expect("non-empty"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .expect("mmap");
        LazyShared { ptr, len }
    }

    /// Allocates (if no process has yet) and maps into this process the
    /// pages of `rows` of [`ROW`] `f64`s, in one call.
    ///
    /// # Panics
    ///
    /// If the rows are out of the mapping or `madvise` fails.
    pub fn populate(&self, rows: std::ops::Range<usize>) {
        let (off, len) = (rows.start * ROW * 8, rows.len() * ROW * 8);
        assert!(off + len <= self.len, "rows out of the mapping");
        // SAFETY: the range is inside our mapping (checked above) and
        // page-aligned (rows are 512 KiB); populating does not change data.
        let addr = unsafe { self.ptr.byte_add(off) };
        // SAFETY: as above: `madvise` on our own mapped range.
        unsafe { madvise(addr, len, MmapAdvise::MADV_POPULATE_WRITE) }.expect("madvise");
    }

    /// Row `row` as a slice.
    ///
    /// # Safety
    ///
    /// While the slice lives no other thread or process may access the row.
    ///
    /// # Panics
    ///
    /// If the row is out of the mapping.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut(&self, row: usize) -> &mut [f64] {
        assert!((row + 1) * ROW * 8 <= self.len, "row out of the mapping");
        // SAFETY: inside the mapping, aligned, any bits are a valid f64; the
        // caller promises exclusive access.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.cast::<f64>().as_ptr().add(row * ROW), ROW)
        }
    }
}

impl Drop for LazyShared {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no slice of it outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

static LAZY: OnceLock<&'static LazyShared> = OnceLock::new();

/// Task: populate rows `[first, end)` of the worker's [`LazyShared`] (this
/// allocates them), then fill each from its own stream.
pub fn lazy_fill_block((first, end, seed): (usize, usize, u64)) {
    let array = LAZY.get().expect("initializer");
    array.populate(first..end);
    for row in first..end {
        // SAFETY: each task of a map gets its own rows, and nobody reads
        // the array until the map is over.
        fill_row(seed, row as u64, unsafe { array.row_mut(row) });
    }
}

/// [`crate::random::parallel`] with a [`LazyShared`] array: creating it
/// (timed, next to nothing) and the fill by `processes` workers (timed),
/// each allocating its own rows. Returns the time and row 0's first value.
///
/// # Panics
///
/// If the pool or the mapping fails.
pub fn random_parallel_lazy(bytes: usize, processes: usize, seed: u64) -> (Duration, f64) {
    let rows = rows_for(bytes);
    let start = Instant::now();
    // Leaked into a `'static` for the workers' global; unmapped below.
    let array: &'static LazyShared = Box::leak(Box::new(LazyShared::new(rows * ROW * 8)));
    let created = start.elapsed();
    let pool = Pool::builder()
        .processes(processes)
        .initializer(move || {
            let _ = LAZY.set(array);
        })
        .build()
        .expect("pool");
    let tasks: Vec<(usize, usize, u64)> = forkpool_shm::split_rows(rows, processes)
        .into_iter()
        .map(|r| (r.start, r.end, seed))
        .collect();
    let start = Instant::now();
    pool.map(lazy_fill_block, tasks).expect("fill");
    let filled = start.elapsed();
    drop(pool);
    // SAFETY: the workers are gone; nobody else uses row 0 now.
    let first = unsafe { array.row_mut(0) }[0];
    // SAFETY: `array` came from `Box::leak` above and nothing refers to it
    // any more (the pool and its workers are gone).
    drop(unsafe { Box::from_raw(std::ptr::from_ref(array).cast_mut()) });
    (created + filled, first)
}

/// Fills `buf` with `value` using ordinary stores (`slice::fill`). Returns
/// the time.
pub fn fill_regular(buf: &mut [f64], value: f64) -> Duration {
    let start = Instant::now();
    buf.fill(value);
    std::hint::black_box(&buf);
    start.elapsed()
}

/// Fills `buf` with `value` using non-temporal 16-byte stores
/// (`movntpd`), which write whole cache lines without reading them first.
/// Returns the time.
#[cfg(target_arch = "x86_64")]
pub fn fill_nontemporal(buf: &mut [f64], value: f64) -> Duration {
    use std::arch::x86_64::{_mm_set1_pd, _mm_sfence, _mm_stream_pd};
    /// Two `f64`s, 16-byte aligned, as `movntpd` needs.
    #[repr(C, align(16))]
    struct Pair([f64; 2]);
    let start = Instant::now();
    // SAFETY: any bits of two `f64`s are a valid `Pair`; `align_to_mut`
    // keeps the 16-byte aligned middle.
    let (head, pairs, tail) = unsafe { buf.align_to_mut::<Pair>() };
    head.fill(value);
    tail.fill(value);
    // SAFETY: SSE2 is part of every x86_64 CPU.
    let v = unsafe { _mm_set1_pd(value) };
    for p in pairs.iter_mut() {
        // SAFETY: `p` is valid, exclusive and 16-byte aligned; SSE2 is part
        // of x86_64.
        unsafe { _mm_stream_pd(p.0.as_mut_ptr(), v) };
    }
    // SAFETY: SSE is part of every x86_64 CPU; orders the streaming stores
    // before whatever follows.
    unsafe { _mm_sfence() };
    std::hint::black_box(&buf);
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_parallel_fill_matches_the_serial_one() {
        let bytes = 5 * ROW * 8;
        let (_, serial) = crate::random::serial(bytes, 9);
        let (_, first) = random_parallel_lazy(bytes, 2, 9);
        assert_eq!(first, serial[0]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn nontemporal_fill_fills() {
        let mut v = vec![0f64; 1001];
        fill_nontemporal(&mut v[1..], 3.0);
        assert_eq!(v[0], 0.0);
        assert!(v[1..].iter().all(|&x| x == 3.0));
    }
}
