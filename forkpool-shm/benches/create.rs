//! Creation cost per GiB of an anonymous shared array (throughput in GiB/s):
//!
//! - `new`: memory check, memfd, map, and every page allocated, zeroed and
//!   mapped by `MADV_POPULATE_WRITE` on one thread per core;
//! - `new + fill`: a filled array in one process (the fill takes no fault);
//! - `fallocate + populate, 1 thread + fill`: what `new` did before it
//!   populated in parallel (reserve the memfd with `fallocate`, then map it
//!   with one `madvise`), the baseline;
//! - `lazy memfd + fill`: pages allocated and zeroed one fault at a time.
//!
//! Dropping the array (freeing the memory) is not timed.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use forkpool_shm::SharedArray;

const SIZE: usize = 1 << 30;
const ROW: usize = 1 << 16;
const NROWS: usize = SIZE / 8 / ROW;

fn timed(iters: u64, mut once: impl FnMut() -> Box<dyn std::any::Any>) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let keep = once();
        total += start.elapsed();
        drop(keep); // freeing is not timed
    }
    total
}

fn create(c: &mut Criterion) {
    let mut g = support::bytes_group(c, "create_1GiB", SIZE, 6);

    g.bench_function("new", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                Box::new(SharedArray::<f64>::new(&[NROWS, ROW]).unwrap())
            })
        })
    });
    g.bench_function("new+fill", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let a = SharedArray::<f64>::new(&[NROWS, ROW]).unwrap();
                a.fill(black_box(1.0));
                Box::new(a)
            })
        })
    });
    g.bench_function("fallocate+populate 1 thread+fill (baseline)", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let mut map = lazy_memfd();
                nix::fcntl::fallocate(&map.1, nix::fcntl::FallocateFlags::empty(), 0, SIZE as i64)
                    .unwrap();
                let ptr = std::ptr::NonNull::new(map.0.as_mut_ptr().cast()).unwrap();
                // SAFETY: the whole mapping, private to this benchmark.
                unsafe {
                    nix::sys::mman::madvise(
                        ptr,
                        SIZE,
                        nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
                    )
                }
                .unwrap();
                fill(&mut map.0);
                Box::new(map)
            })
        })
    });
    g.bench_function("lazy memfd+fill (fault per page)", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let mut map = lazy_memfd();
                fill(&mut map.0);
                Box::new(map)
            })
        })
    });
    g.finish();
}

/// A memfd of `SIZE` bytes, nothing allocated, mapped shared.
fn lazy_memfd() -> (memmap2::MmapMut, std::fs::File) {
    let fd = nix::sys::memfd::memfd_create(c"bench-lazy", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(SIZE as u64).unwrap();
    // SAFETY: the memfd is private to this benchmark.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    (map, file)
}

/// Fills the mapping with 1.0.
fn fill(map: &mut memmap2::MmapMut) {
    // SAFETY: the mapping is SIZE bytes, page-aligned, private here.
    let all = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f64>(), SIZE / 8) };
    all.fill(black_box(1.0));
}

criterion_group!(benches, create);
criterion_main!(benches);
