//! The source notes' `RawArray` + `Pool(initializer=...)` example, written
//! as a Python user would write it in Rust: a complete program to paste and
//! adapt (the book's "Migrating from Python" chapter includes it from here;
//! `demos/tests/migrating.rs` runs it).
//!
//! ```text
//! cargo run --release -p demos --example migrating
//! ```

// ANCHOR: example
use std::sync::OnceLock;

use forkpool::Pool;
use forkpool_shm::SharedArray;

/// Python: the module-level `arr`, set in each worker by `_init`.
static ARR: OnceLock<SharedArray<f64>> = OnceLock::new();

/// Python: `def populate(args): offset, blocksize = args; arr[offset:offset + blocksize, :] = offset`
fn populate((offset, blocksize): (usize, usize)) -> usize {
    let arr = ARR.get().expect("the initializer stored the array");
    arr.fill_rows(offset..offset + blocksize, offset as f64);
    blocksize
}

/// Python: the `if __name__ == '__main__':` block.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rows, cols, blocksize) = (1_000, 1_000, 100);

    // Python: shared_arr = RawArray('d', rows * cols), made before the pool.
    let shared_arr = SharedArray::<f64>::new(&[rows, cols])?;

    // Python: pool = Pool(processes=4, initializer=_init, initargs=(shared_arr,))
    let for_workers = shared_arr.clone();
    let pool = Pool::builder()
        .processes(4)
        .initializer(move || {
            ARR.set(for_workers.clone())
                .expect("a worker runs its initializer once");
        })
        .build()?;

    // Python: pool.map(populate, [(o, blocksize) for o in range(0, rows, blocksize)])
    let blocks: Vec<(usize, usize)> = (0..rows)
        .step_by(blocksize)
        .map(|offset| (offset, blocksize))
        .collect();
    let filled: usize = pool.map(populate, blocks)?.into_iter().sum();

    // The workers wrote the parent's array: one copy, no pickling.
    assert_eq!(filled, rows);
    assert_eq!(shared_arr.get_at(&[250, 7]), 200.0);
    assert_eq!(shared_arr.get_at(&[999, 999]), 900.0);
    println!("{filled} rows filled by 4 workers, seen by the parent");
    Ok(())
}
// ANCHOR_END: example
