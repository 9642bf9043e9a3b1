//! Creation cost per GiB of an anonymous shared array (throughput in GiB/s):
//!
//! - `new`: memory check, memfd, `fallocate` (allocates every page), map;
//! - `new + prefault`: and map every page into this process;
//! - `new + prefault + fill`, `new + fill` (faulting page by page): a filled
//!   array in one process;
//! - `lazy memfd + fill`: the baseline without reservation, pages allocated
//!   and zeroed one fault at a time (what `fallocate` replaces).
//!
//! Dropping the array (freeing the memory) is not timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
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
    let mut g = c.benchmark_group("create_1GiB");
    g.throughput(Throughput::Bytes(SIZE as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));

    g.bench_function("new", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                Box::new(SharedArray::<f64>::new(&[NROWS, ROW]).unwrap())
            })
        })
    });
    g.bench_function("new+prefault", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let a = SharedArray::<f64>::new(&[NROWS, ROW]).unwrap();
                a.prefault(0..NROWS).unwrap();
                Box::new(a)
            })
        })
    });
    g.bench_function("new+prefault+fill", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let a = SharedArray::<f64>::new(&[NROWS, ROW]).unwrap();
                a.prefault(0..NROWS).unwrap();
                a.fill(black_box(1.0));
                Box::new(a)
            })
        })
    });
    g.bench_function("new+fill (fault per page)", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let a = SharedArray::<f64>::new(&[NROWS, ROW]).unwrap();
                a.fill(black_box(1.0));
                Box::new(a)
            })
        })
    });
    g.bench_function("lazy memfd+fill (no reservation, baseline)", |b| {
        b.iter_custom(|iters| {
            timed(iters, || {
                let fd = nix::sys::memfd::memfd_create(
                    c"bench-lazy",
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                )
                .unwrap();
                let file = std::fs::File::from(fd);
                file.set_len(SIZE as u64).unwrap();
                // SAFETY: the memfd is private to this benchmark.
                let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
                // SAFETY: the mapping is SIZE bytes, page-aligned, private here.
                let all = unsafe {
                    std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f64>(), SIZE / 8)
                };
                all.fill(black_box(1.0));
                Box::new(map)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, create);
criterion_main!(benches);
