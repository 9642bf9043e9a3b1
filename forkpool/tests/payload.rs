//! Big and odd values through real workers: every plain element type,
//! `ndarray` arrays, structs holding them, empty and odd lengths, values
//! bigger than a pipe.

mod common;

use common::TestPool;
use serde::{Deserialize, Serialize};

fn echo<T>(v: T) -> T {
    v
}

/// Sends `v` to a worker and back with `apply`, and as a `map` of copies.
macro_rules! through_pool {
    ($pool:expr, $t:ty, $v:expr) => {{
        let v: $t = $v;
        let back = $pool.apply(echo::<$t> as fn($t) -> $t, v.clone()).unwrap();
        assert_eq!(back, v, "{}", stringify!($t));
        let many = $pool
            .map(echo::<$t> as fn($t) -> $t, vec![v.clone(); 3])
            .unwrap();
        assert!(many.iter().all(|m| *m == v), "{}", stringify!($t));
    }};
}

macro_rules! every_plain_type {
    ($pool:expr, $len:expr, $($t:ty),*) => {
        $(
            through_pool!(
                $pool,
                Vec<$t>,
                (0..$len).map(|i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as $t).collect()
            );
        )*
    };
}

#[test]
fn vectors_of_every_plain_type_round_trip_through_a_worker() {
    let pool = TestPool::new(2);
    for len in [0usize, 1, 3, 4097, (1 << 20) + 7] {
        every_plain_type!(
            pool, len, u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64
        );
    }
}

#[test]
fn a_value_bigger_than_the_pipe_round_trips_intact() {
    fn reverse(mut v: Vec<f64>) -> Vec<f64> {
        v.reverse();
        v
    }
    let pool = TestPool::new(1);
    let v: Vec<f64> = (0..3_000_001).map(|i| i as f64 * 0.25).collect();
    let back = pool.apply(reverse, v.clone()).unwrap();
    assert_eq!(back.len(), v.len());
    assert!(back.iter().rev().eq(v.iter()));
}

#[test]
fn ndarray_arrays_round_trip_through_a_worker() {
    fn scale(a: ndarray::Array2<f64>) -> ndarray::Array2<f64> {
        a * 2.0
    }
    let pool = TestPool::new(1);
    let a = ndarray::Array2::from_shape_fn((513, 257), |(i, j)| (i * 1000 + j) as f64);
    assert_eq!(pool.apply(scale, a.clone()).unwrap(), &a * 2.0);
    // A transposed (column-major) array goes element by element; same result.
    let t = a.t().to_owned();
    assert_eq!(pool.apply(scale, t.clone()).unwrap(), &t * 2.0);
    through_pool!(
        pool,
        ndarray::Array1<u8>,
        ndarray::Array1::from_vec(vec![7u8; 100_003])
    );
    through_pool!(
        pool,
        ndarray::Array3<i32>,
        ndarray::Array3::zeros((4, 0, 9))
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Frame {
    id: u32,
    label: String,
    pixels: Vec<u8>,
    samples: Vec<f64>,
    grid: ndarray::Array2<f32>,
    tags: Vec<Option<String>>,
}

#[test]
fn structs_holding_arrays_round_trip_through_a_worker() {
    let pool = TestPool::new(2);
    let frame = |id: u32| Frame {
        id,
        label: format!("frame {id}"),
        pixels: (0..100_001u32).map(|i| i as u8).collect(),
        samples: (0..70_001).map(|i| (i as f64).sqrt()).collect(),
        grid: ndarray::Array2::from_shape_fn((31, 17), |(i, j)| (i as f32) - (j as f32)),
        tags: vec![None, Some("a".into()), Some(String::new())],
    };
    through_pool!(pool, Frame, frame(1));
    let frames: Vec<Frame> = (0..5).map(frame).collect();
    let back = pool
        .map(echo::<Frame> as fn(Frame) -> Frame, frames.clone())
        .unwrap();
    assert_eq!(back, frames);
}

#[test]
fn a_result_with_out_of_band_buffers_and_a_big_array_round_trips() {
    // The result frame carries both the buffers' descriptors (FDS) and a
    // run of numbers apart (RUN): both bits on one kind byte.
    fn both(v: Vec<f64>) -> (forkpool::Buffer<f64>, Vec<f64>, u8) {
        let b = forkpool::Buffer::from_slice(&v[..1000]).unwrap();
        (b, v, 7)
    }
    let pool = TestPool::new(1);
    let v: Vec<f64> = (0..300_001).map(|i| i as f64 * 0.5).collect();
    for _ in 0..3 {
        let (b, back, seven) = pool.apply(both, v.clone()).unwrap();
        assert_eq!(b.as_slice(), &v[..1000]);
        assert_eq!(back, v);
        assert_eq!(seven, 7);
    }
}

/// The resident memory of process `pid`, in bytes (`VmRSS`).
fn rss(pid: forkpool::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in:\n{status}"));
    kib << 10
}

#[test]
fn a_pool_built_after_a_big_value_inherited_the_parents_spare_frame_buffer() {
    // In a process of its own: other tests' big values, alive in this
    // process when a pool forks, would count in its zygote too.
    const NAME: &str = "a_pool_built_after_a_big_value_inherited_the_parents_spare_frame_buffer";
    if !common::in_own_process(NAME, 120) {
        return;
    }
    const BIG: usize = 64 << 20;
    let first = TestPool::new(1);
    let back = first.apply(echo::<Vec<u8>>, vec![7u8; BIG]).unwrap();
    assert_eq!(back.len(), BIG);
    drop(back);
    // The parent keeps its last big frame buffer for its next big value;
    // a pool forked now must not carry those pages in every process.
    assert_new_zygote_is_small(BIG, "value went through");
}

/// Builds a pool and checks its zygote holds less than half of `big`
/// bytes (what a `big`-byte value that `how` another pool left behind).
fn assert_new_zygote_is_small(big: usize, how: &str) {
    let later = TestPool::new(1);
    let zygote = rss(later.zygote_pid());
    assert!(
        zygote < (big / 2) as u64,
        "the new pool's zygote holds {} MiB after a {} MiB {how} another pool",
        zygote >> 20,
        big >> 20
    );
}

#[test]
fn a_big_argument_kept_for_the_next_value_outlived_its_pool_and_went_into_the_next_zygote() {
    // The parent keeps a big `Vec` argument's memory, once sent, to receive
    // the next big value into; with a small result nothing takes it. It
    // must neither stay resident after the pool is gone nor be inherited
    // by a pool built later. In a process of its own, as above.
    const NAME: &str =
        "a_big_argument_kept_for_the_next_value_outlived_its_pool_and_went_into_the_next_zygote";
    if !common::in_own_process(NAME, 120) {
        return;
    }
    const BIG: usize = 64 << 20;
    fn len(v: Vec<u8>) -> usize {
        v.len()
    }
    let me = forkpool::Pid::this();
    let before = rss(me);
    let first = TestPool::new(1);
    assert_eq!(first.apply(len, vec![7u8; BIG]).unwrap(), BIG);
    drop(first);
    let after = rss(me);
    assert!(
        after < before + (BIG / 2) as u64,
        "the parent holds {} MiB more after its only pool is gone ({} MiB value sent)",
        (after.saturating_sub(before)) >> 20,
        BIG >> 20
    );
    let second = TestPool::new(1);
    assert_eq!(second.apply(len, vec![7u8; BIG]).unwrap(), BIG);
    assert_new_zygote_is_small(BIG, "argument went to");
}

/// An argument for a `fn(Vec<u8>)`: a good vector, or bytes that cannot
/// decode as one (a length far past the bytes there are).
enum MaybeBytes {
    Good(Vec<u8>),
    Bad,
}

impl Serialize for MaybeBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaybeBytes::Good(v) => v.serialize(s),
            MaybeBytes::Bad => s.serialize_u64(u64::MAX),
        }
    }
}

impl forkpool::Arg<Vec<u8>> for MaybeBytes {}

#[test]
fn big_vec_results_written_from_their_own_memory_keep_their_places_in_the_frame() {
    // A worker writes a task's last result, when it is a big `Vec` of
    // plain numbers, from the `Vec`'s own memory, and copies the others:
    // several big results in one task, and a decode failure reported after
    // the lent one, must all land where the parent reads them.
    fn rev(mut v: Vec<u8>) -> Vec<u8> {
        v.reverse();
        v
    }
    let pool = TestPool::new(1);
    let big = |k: u8| -> Vec<u8> { (0..300_000u32).map(|i| (i as u8) ^ k).collect() };
    for chunk in [1, 2, 3] {
        let items: Vec<Vec<u8>> = (0..7).map(big).collect();
        let back = pool.map_chunked(rev, items.clone(), chunk).unwrap();
        for (b, v) in back.iter().zip(&items) {
            assert!(b.iter().rev().eq(v.iter()), "chunks of {chunk}");
        }
    }
    // Small results between big ones, in one task.
    fn sized(n: usize) -> Vec<u64> {
        (0..n as u64).collect()
    }
    let lens = [100_000usize, 3, 70_000, 0, 9_000];
    let back = pool.map_chunked(sized, lens, 5).unwrap();
    for (b, n) in back.iter().zip(lens) {
        assert_eq!(b.len(), n);
        assert!(b.iter().copied().eq(0..n as u64));
    }
    // The third argument does not decode: the first two ran, the second's
    // result was lent, and the failure follows it in the frame.
    let items = vec![
        MaybeBytes::Good(big(1)),
        MaybeBytes::Good(big(2)),
        MaybeBytes::Bad,
    ];
    match pool.map_chunked(rev, items, 3) {
        Err(forkpool::Error::Decode { item: 2, what, .. }) => assert_eq!(what, "argument"),
        other => panic!("expected the third argument's decode error, got {other:?}"),
    }
    // The worker is fine after it.
    assert_eq!(pool.apply(rev, big(9)).unwrap(), {
        let mut v = big(9);
        v.reverse();
        v
    });
}

#[test]
fn a_worker_killed_while_a_big_vec_argument_is_written_from_its_memory_fails_it_cleanly() {
    fn len(v: Vec<u8>) -> usize {
        v.len()
    }
    let pool = TestPool::new(1);
    for round in 0..3 {
        let victim = pool.worker_pids()[0];
        // 256 MiB, written from the `Vec`'s own memory: the kill lands while
        // it is on its way (or, at worst, before it went, when the
        // replacement takes it whole).
        let big = pool.apply_async(len, vec![7u8; 256 << 20]);
        std::thread::sleep(std::time::Duration::from_millis(10 + 10 * round));
        common::kill(victim, libc::SIGKILL);
        match big.get() {
            Err(forkpool::Error::WorkerDied { pid, .. }) => assert_eq!(pid, victim),
            Ok(n) => assert_eq!(n, 256 << 20),
            Err(e) => panic!("expected the killed worker's error, got {e}"),
        }
        // The replacement takes the next big argument whole.
        assert_eq!(pool.apply(len, vec![3u8; 64 << 20]).unwrap(), 64 << 20);
    }
}
