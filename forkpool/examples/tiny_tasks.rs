//! Tiny-task throughput: what the pool costs per task when the task itself
//! costs nothing. Two workers; `map` of 100 000 items at chunksize 1,
//! `imap` and `imap_unordered` of 100 000 items at chunksize 1, a loop of
//! 20 000 `apply_async`, the round trip of one `apply`, and `map` of 1 M
//! items with default chunks. Prints the median of `reps` runs of each.
//!
//! `cargo run --release -p forkpool --example tiny_tasks -- [reps] [rows]`
//! (`rows`: a comma-separated subset of `map1,imap1,imapu1,async,apply,mapdef`).
//!
//! It uses only calls that `forkpool` had before the scheduler rework, so
//! the same file builds against an older checkout (out of tree, with a
//! path dependency) to compare builds side by side; see the scheduling
//! section of `benches/RESULTS.md`.

use std::time::{Duration, Instant};

fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `f` `reps` times; the durations it returns.
fn sample(reps: usize, mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    (0..reps).map(|_| f()).collect()
}

fn main() -> Result<(), forkpool::Error> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let only = args.get(2).cloned().unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    const N: u64 = 100_000;
    let pool = forkpool::Pool::new(2)?;
    // Warm-up: the workers' first pages, and the function's cost known.
    pool.map_chunked(inc, 0..N, 1)?;
    let mut rows: Vec<(&str, Vec<Duration>)> = Vec::new();
    if want("map1") {
        let t = sample(reps, || {
            let start = Instant::now();
            let out = pool.map_chunked(inc, 0..N, 1).expect("map");
            assert_eq!(out.len() as u64, N);
            start.elapsed()
        });
        rows.push(("map, 100 000 tasks, chunksize 1", t));
    }
    for (id, ordered) in [("imap1", true), ("imapu1", false)] {
        if want(id) {
            let t = sample(reps, || {
                let start = Instant::now();
                let ok = if ordered {
                    pool.imap(inc, 0..N, 1).filter(Result::is_ok).count()
                } else {
                    pool.imap_unordered(inc, 0..N, 1)
                        .filter(Result::is_ok)
                        .count()
                };
                assert_eq!(ok as u64, N);
                start.elapsed()
            });
            let name = if ordered {
                "imap, 100 000 tasks, chunksize 1"
            } else {
                "imap_unordered, 100 000 tasks, chunksize 1"
            };
            rows.push((name, t));
        }
    }
    if want("async") {
        let t = sample(reps, || {
            let start = Instant::now();
            let handles: Vec<_> = (0..20_000u64).map(|i| pool.apply_async(inc, i)).collect();
            for h in handles {
                h.get().expect("apply_async");
            }
            start.elapsed()
        });
        rows.push(("apply_async x 20 000, then get each", t));
    }
    if want("apply") {
        let t = sample(reps, || {
            let start = Instant::now();
            for i in 0..2000u64 {
                pool.apply(inc, i).expect("apply");
            }
            start.elapsed() / 2000
        });
        rows.push(("apply round trip (mean of 2000)", t));
    }
    if want("mapdef") {
        let t = sample(reps, || {
            let start = Instant::now();
            let out = pool.map(inc, 0..1_000_000u64).expect("map");
            assert_eq!(out.len(), 1_000_000);
            start.elapsed()
        });
        rows.push(("map, 1 M items, default chunks", t));
    }
    for (name, t) in rows {
        println!(
            "{name:<44} median {:>10.3?}  all {t:.3?}",
            median(t.clone())
        );
    }
    Ok(())
}
