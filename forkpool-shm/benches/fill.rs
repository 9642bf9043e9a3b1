//! Filling a 256 MiB shared array of `f64`.
//!
//! - the ceiling: `memset` (`slice::fill`) of an already-faulted private
//!   buffer by one process;
//! - the same on a shared array this process has already mapped, through the
//!   `unsafe` slice path and through the safe atomic `fill_rows`;
//! - 1 and 2 forked workers filling their rows of a shared array they have
//!   not mapped yet (every fresh worker's case), faulting page by page or
//!   pre-faulting first with `prefault` (`MADV_POPULATE_WRITE`);
//! - the fork + exit + wait overhead alone, to read the above against.

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use forkpool_shm::SharedArray;

const SIZE: usize = 256 << 20;
const ROW: usize = 1 << 16; // 512 KiB rows of f64
const NROWS: usize = SIZE / 8 / ROW;

fn fill(c: &mut Criterion) {
    let mut g = support::bytes_group(c, "fill_256MiB", SIZE, 4);

    {
        let mut private = vec![0f64; SIZE / 8];
        private.fill(1.0);
        g.bench_function("memset_private_faulted_1proc (ceiling)", |b| {
            b.iter(|| {
                private.fill(black_box(2.0));
                black_box(&mut private);
            })
        });
        // Freed here: a large private buffer would make every fork below
        // copy its page tables.
    }

    let array = SharedArray::<f64>::new(&[NROWS, ROW]).unwrap();
    array.prefault(0..NROWS).unwrap();
    g.bench_function("shared_faulted_1proc_unsafe_slice_fill", |b| {
        b.iter(|| {
            // SAFETY: no other process or thread uses the array meanwhile.
            let all = unsafe { array.rows_mut_unchecked(0..NROWS) };
            all.fill(black_box(3.0));
            black_box(all);
        })
    });
    g.bench_function("shared_faulted_1proc_atomic_fill_rows", |b| {
        b.iter(|| array.fill_rows(0..NROWS, black_box(4.0)))
    });

    g.bench_function("forked_2proc_empty (fork+exit+wait overhead)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| support::forked(&[0, 1], |_| ())).sum())
    });
    for procs in [1usize, 2] {
        for prefault in [false, true] {
            let how = if prefault {
                "prefault_then_fill"
            } else {
                "fault_per_page"
            };
            let blocks = array.row_blocks(procs);
            let items: Vec<usize> = (0..procs).collect();
            g.bench_function(format!("forked_{procs}proc_{how}"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            support::forked(&items, |i| {
                                let rows = blocks[i].clone();
                                if prefault {
                                    array.prefault(rows.clone()).unwrap();
                                }
                                array.fill_rows(rows, 5.0);
                            })
                        })
                        .sum()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, fill);
criterion_main!(benches);
