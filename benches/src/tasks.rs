//! Task throughput, round trips and payloads through the pool, and the
//! `rayon` ceiling for task throughput.
//!
//! The functions workers run are plain `fn`s here, so every benchmark binary
//! and the comparison runner send the same code.

use std::hint::black_box;
use std::time::{Duration, Instant};

use forkpool::{Buffer, Pool};
use rayon::prelude::*;

/// The per-task work of the task-throughput benchmarks: next to nothing, so
/// what is measured is the pool's cost per task.
pub fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// The payload benchmarks' task: takes a buffer, answers with its length.
pub fn byte_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// A byte buffer that serde sees as one byte string (`serialize_bytes`, one
/// copy) rather than as a sequence of `u8`s (one call per byte, as for a
/// plain `Vec<u8>`); what the `serde_bytes` crate's `ByteBuf` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// [`byte_len`] for a [`Bytes`] argument.
pub fn bytes_len(bytes: Bytes) -> usize {
    bytes.0.len()
}

/// How a map splits its items into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// Python's rule (about four tasks per worker), the default of `map`.
    Default,
    /// This many items per task.
    Size(usize),
}

impl Chunks {
    /// A short name for benchmark ids and tables.
    pub fn label(self) -> String {
        match self {
            Chunks::Default => "default".into(),
            Chunks::Size(n) => n.to_string(),
        }
    }
}

/// Checks a map of [`inc`] over `0..n` and keeps it from being optimised out.
fn check(out: &[u64], items: &[u64]) {
    assert_eq!(out.len(), items.len());
    assert_eq!(out.last(), items.last().map(|&x| inc(x)).as_ref());
    black_box(out);
}

/// Times one `pool.map(inc, items)` split as `chunks` says.
pub fn time_map(pool: &Pool, items: &[u64], chunks: Chunks) -> Duration {
    let start = Instant::now();
    let out = match chunks {
        Chunks::Default => pool.map(inc, items.iter().copied()),
        Chunks::Size(n) => pool.map_chunked(inc, items.iter().copied(), n),
    }
    .expect("map");
    let took = start.elapsed();
    check(&out, items);
    took
}

/// The ceiling for task throughput: the same map on a `rayon` pool of
/// threads in this process (no processes, no pipes, no serialisation).
#[derive(Debug)]
pub struct RayonMap {
    pool: rayon::ThreadPool,
}

impl RayonMap {
    /// A `rayon` pool of `threads` threads.
    pub fn new(threads: usize) -> RayonMap {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool");
        RayonMap { pool }
    }

    /// Times `items.par_iter().map(inc).collect()`, with at most `chunks`
    /// items per rayon job (`with_max_len`), or rayon's own splitting for
    /// [`Chunks::Default`].
    pub fn time_map(&self, items: &[u64], chunks: Chunks) -> Duration {
        let start = Instant::now();
        let out: Vec<u64> = self.pool.install(|| match chunks {
            Chunks::Default => items.par_iter().map(|&x| inc(black_box(x))).collect(),
            Chunks::Size(n) => items
                .par_iter()
                .with_max_len(n)
                .map(|&x| inc(black_box(x)))
                .collect(),
        });
        let took = start.elapsed();
        check(&out, items);
        took
    }

    /// Runs `f` on the rayon pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Times `n` sequential `pool.apply(inc, x)` round trips; returns the time
/// per round trip.
pub fn time_apply(pool: &Pool, n: u32) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let r = pool.apply(inc, black_box(u64::from(i))).expect("apply");
        assert_eq!(r, u64::from(i) + 1);
    }
    start.elapsed() / n.max(1)
}

/// Times `pool.apply(byte_len, payload)`: the payload's trip to a worker and
/// the answer's trip back. The payload is built before the clock starts.
pub fn time_payload(pool: &Pool, payload: Vec<u8>) -> Duration {
    let len = payload.len();
    let start = Instant::now();
    let got = pool.apply(byte_len, payload).expect("apply");
    let took = start.elapsed();
    assert_eq!(got, len);
    took
}

/// [`time_payload`] with the payload as [`Bytes`].
pub fn time_payload_bytes(pool: &Pool, payload: Bytes) -> Duration {
    let len = payload.0.len();
    let start = Instant::now();
    let got = pool.apply(bytes_len, payload).expect("apply");
    let took = start.elapsed();
    assert_eq!(got, len);
    took
}

/// The round-trip benchmarks' task for bytes: the value comes back as it went.
pub fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

/// The round-trip benchmarks' task for floats.
pub fn echo_floats(v: Vec<f64>) -> Vec<f64> {
    v
}

/// Times `n` sequential `pool.apply(echo_bytes, ..)` of a `len`-byte value
/// (made before the clock starts; the answer is dropped after it stops).
/// Returns the time per round trip.
pub fn time_round_trip_bytes(pool: &Pool, len: usize, n: u32) -> Duration {
    let values: Vec<Vec<u8>> = (0..n).map(|_| vec![1u8; len]).collect();
    let start = Instant::now();
    let back: Vec<Vec<u8>> = values
        .into_iter()
        .map(|v| pool.apply(echo_bytes, v).expect("apply"))
        .collect();
    let took = start.elapsed();
    assert!(back.iter().all(|b| b.len() == len));
    took / n.max(1)
}

/// [`time_round_trip_bytes`] with `len / 8` doubles.
pub fn time_round_trip_floats(pool: &Pool, len: usize, n: u32) -> Duration {
    let values: Vec<Vec<f64>> = (0..n).map(|_| vec![1.5f64; len / 8]).collect();
    let start = Instant::now();
    let back: Vec<Vec<f64>> = values
        .into_iter()
        .map(|v| pool.apply(echo_floats, v).expect("apply"))
        .collect();
    let took = start.elapsed();
    assert!(back.iter().all(|b| b.len() == len / 8));
    took / n.max(1)
}

/// The out-of-band round-trip benchmarks' task: the buffer comes back as
/// it went (its descriptor, both ways; no byte of it crosses a pipe).
pub fn echo_buffer(b: Buffer<f64>) -> Buffer<f64> {
    b
}

/// Times `n` sequential `pool.apply(echo_buffer, ..)` of a `len`-byte
/// [`Buffer<f64>`], made before the clock starts (as
/// [`time_round_trip_floats`]'s vectors are) when `from_vec` is false; with
/// `from_vec`, made inside the clock from a `Vec<f64>` (the one copy that
/// passing by value out of band costs). Returns the time per round trip.
pub fn time_round_trip_buffer(pool: &Pool, len: usize, n: u32, from_vec: bool) -> Duration {
    let values: Vec<Vec<f64>> = (0..n).map(|_| vec![1.5f64; len / 8]).collect();
    let made: Vec<Buffer<f64>> = if from_vec {
        Vec::new()
    } else {
        values
            .iter()
            .map(|v| Buffer::from_slice(v).expect("a buffer"))
            .collect()
    };
    let start = Instant::now();
    let back: Vec<Buffer<f64>> = if from_vec {
        values
            .iter()
            .map(|v| {
                let b = Buffer::from_slice(v).expect("a buffer");
                pool.apply(echo_buffer, b).expect("apply")
            })
            .collect()
    } else {
        made.into_iter()
            .map(|b| pool.apply(echo_buffer, b).expect("apply"))
            .collect()
    };
    let took = start.elapsed();
    assert!(back.iter().all(|b| b.len() == len / 8 && b[0] == 1.5));
    took / n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_postcard_as_one_string() {
        let b = Bytes(vec![1, 2, 250]);
        let enc = postcard::to_allocvec(&b).unwrap();
        assert_eq!(enc, [3, 1, 2, 250]); // the same wire form as a Vec<u8>
        assert_eq!(postcard::from_bytes::<Bytes>(&enc).unwrap(), b);
        let pool = Pool::new(1).unwrap();
        time_payload_bytes(&pool, Bytes(vec![7; 100_000]));
        time_payload(&pool, vec![7; 100_000]);
        time_round_trip_bytes(&pool, 1000, 3);
        time_round_trip_floats(&pool, 1 << 20, 1);
    }

    #[test]
    fn buffer_round_trips_run_both_ways() {
        let pool = Pool::new(1).unwrap();
        time_round_trip_buffer(&pool, 1 << 20, 2, false);
        time_round_trip_buffer(&pool, 1 << 20, 2, true);
    }
}
