//! Big `Vec`s of plain numbers that the pool owned and was done with (an
//! argument once sent, a result once sent) are the memory the next big
//! value is received into, in the parent and in a worker: no new pages,
//! so no page fault per 4 KiB. Counted with the processes' minor faults
//! (this file is its own process, and holds one test, so nothing else
//! runs in it meanwhile).

use forkpool::Pool;

fn echo(v: Vec<f64>) -> Vec<f64> {
    v
}

/// Minor page faults of the calling process so far (all its threads).
fn minor_faults() -> u64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    usage.minor_page_faults() as u64
}

/// The worker's own count.
fn worker_faults(_: ()) -> u64 {
    minor_faults()
}

#[test]
fn a_big_vec_is_received_into_the_memory_of_the_last_one_sent_not_new_pages() {
    // 40 MiB of f64s (10 240 pages): above glibc's largest mmap threshold
    // (32 MiB), so the allocator itself keeps nothing of this size.
    const N: usize = 5 << 20;
    const PAGES: u64 = (N * 8 / 4096) as u64;
    let pool = Pool::new(1).unwrap();
    let value = |k: usize| -> Vec<f64> { (0..N).map(|i| (i + k) as f64).collect() };
    // Two round trips first: the buffers each side keeps are then in place.
    for k in 0..2 {
        let back = pool.apply(echo, value(k)).unwrap();
        assert_eq!(back[N - 1], (N - 1 + k) as f64);
    }
    let mut parent = Vec::new();
    let mut worker = Vec::new();
    for k in 2..5 {
        let v = value(k); // its pages faulted in before the count
        let w0 = pool.apply(worker_faults, ()).unwrap();
        let p0 = minor_faults();
        let back = pool.apply(echo, v).unwrap();
        parent.push(minor_faults() - p0);
        worker.push(pool.apply(worker_faults, ()).unwrap() - w0);
        assert!(back.iter().enumerate().all(|(i, x)| *x == (i + k) as f64));
    }
    // Received into new memory, each side would fault in every page of the
    // value it receives (10 240), populated in bulk or not.
    assert!(
        parent.iter().all(|&f| f < PAGES / 4),
        "parent faults per 40 MiB round trip: {parent:?} (new memory: {PAGES})"
    );
    assert!(
        worker.iter().all(|&f| f < PAGES / 4),
        "worker faults per 40 MiB round trip: {worker:?} (new memory: {PAGES})"
    );
}
