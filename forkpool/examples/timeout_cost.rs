//! What `PoolBuilder::task_timeout` costs: with a limit, each worker holds
//! one task at a time (so the pool knows which task runs), which takes the
//! batching away from tiny tasks. Runs three workloads on two workers with
//! and without a (never reached) 10 s limit, side by side, and prints the
//! median of seven rounds of each.
//!
//! `cargo run --release -p forkpool --example timeout_cost`

use std::time::{Duration, Instant};

use comfy_table::{Table, presets};

fn inc(x: u64) -> u64 {
    x + 1
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), forkpool::Error> {
    const ROUNDS: usize = 7;
    let mut times: [[Vec<Duration>; 3]; 2] = Default::default();
    for _ in 0..ROUNDS {
        for (t, limit) in [None, Some(Duration::from_secs(10))]
            .into_iter()
            .enumerate()
        {
            let mut builder = forkpool::Pool::builder().processes(2);
            if let Some(limit) = limit {
                builder = builder.task_timeout(limit);
            }
            let pool = builder.build()?;
            let t0 = Instant::now();
            let n = pool.imap_unordered(inc, 0..20_000u64, 1).count();
            times[t][0].push(t0.elapsed());
            assert_eq!(n, 20_000);
            let t0 = Instant::now();
            assert_eq!(pool.map(inc, 0..200_000u64)?.len(), 200_000);
            times[t][1].push(t0.elapsed());
            let t0 = Instant::now();
            for i in 0..2000u64 {
                pool.apply(inc, i)?;
            }
            times[t][2].push(t0.elapsed());
        }
    }
    let names = [
        "imap_unordered, 20 000 tiny items, chunksize 1",
        "map, 200 000 tiny items, default chunks",
        "apply x 2000",
    ];
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN).set_header([
        "workload",
        "no limit",
        "task_timeout(10 s)",
        "ratio",
    ]);
    for (w, name) in names.iter().enumerate() {
        let a = median(times[0][w].clone());
        let b = median(times[1][w].clone());
        table.add_row([
            name.to_string(),
            format!("{a:.1?}"),
            format!("{b:.1?}"),
            format!("{:.2}", b.as_secs_f64() / a.as_secs_f64()),
        ]);
    }
    println!("{}", table.trim_fmt());
    Ok(())
}
