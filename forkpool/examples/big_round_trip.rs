//! Loops `apply(echo, v)` of a big value, beside a warm memcpy of the same
//! size, and prints each figure (for profiling the by-value path:
//! `perf record -g`, `strace -c -f`).
//!
//! `cargo run --release -p forkpool --example big_round_trip -- [u8|f64|buf] [MiB] [reps]`

use std::hint::black_box;
use std::time::{Duration, Instant};

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_floats(v: Vec<f64>) -> Vec<f64> {
    v
}

fn echo_buffer(b: forkpool::Buffer<f64>) -> forkpool::Buffer<f64> {
    b
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), forkpool::Error> {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map_or("u8", String::as_str).to_string();
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let len = mib << 20;
    let pool = forkpool::Pool::new(2)?;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let (mut trips, mut copies) = (Vec::new(), Vec::new());
    let no_copy = std::env::var_os("PROBE_NO_MEMCPY").is_some();
    for _ in 0..reps {
        if !no_copy {
            let t = Instant::now();
            dst.copy_from_slice(black_box(&src));
            copies.push(t.elapsed());
            black_box(&dst);
        }
        let took = match kind.as_str() {
            "u8" => {
                let v = vec![1u8; len];
                let t = Instant::now();
                let back = pool.apply(echo_bytes, v)?;
                let took = t.elapsed();
                assert_eq!(back.len(), len);
                took
            }
            "f64" => {
                let v = vec![1.5f64; len / 8];
                let t = Instant::now();
                let back = pool.apply(echo_floats, v)?;
                let took = t.elapsed();
                assert_eq!(back.len(), len / 8);
                took
            }
            _ => {
                let v = vec![1.5f64; len / 8];
                let t = Instant::now();
                let b = forkpool::Buffer::from_slice(&v)?;
                let back = pool.apply(echo_buffer, b)?;
                let took = t.elapsed();
                assert_eq!(back.len(), len / 8);
                took
            }
        };
        trips.push(took);
    }
    if copies.is_empty() {
        copies.push(Duration::from_nanos(1));
    }
    let (t, c) = (median(trips), median(copies));
    println!(
        "{kind} {mib} MiB: round trip {t:?}, memcpy {c:?}, ratio {:.1}x",
        t.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}
