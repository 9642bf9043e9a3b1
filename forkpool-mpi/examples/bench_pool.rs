//! forkpool-mpi's side of the comparison with `mpi4py.futures`
//! (`benches/python/mpi_pool.py` is the other side): the per-task rate at
//! chunksize 1, a map of 1 M tiny items, and the random fill of a
//! 2000 x 32000 array in a node-shared window. Each workload runs once to
//! warm up, then `--reps` times; one JSON line per workload gives the
//! median.
//!
//! ```text
//! cargo build --release -p forkpool-mpi --features mpi --examples
//! mpirun -n 4 target/release/examples/bench_pool --reps 5
//! ```

use std::time::Instant;

use clap::Parser;
use demos::random_fill::fill_row;
use forkpool_mpi::{NodeArray, Pool};

/// Options.
#[derive(Parser, Debug)]
struct Args {
    /// Timed runs of each workload (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Tasks of the per-task workload.
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    /// Items of the map workload.
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Rows and columns of the random fill.
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
}

fn noop(x: u64) -> u64 {
    x
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn fill_block((array, start, end, seed): (NodeArray<f64>, usize, usize, u64)) -> usize {
    array.prefault_rows(start..end);
    let mut row = vec![0.0; array.row_len()];
    for r in start..end {
        fill_row(seed, r as u64, &mut row);
        array.write_row(r, &row);
    }
    end - start
}

/// Runs `f` once to warm up and `reps` times timed; the median seconds.
fn median(
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    f()?;
    let mut runs = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        runs.push(t0.elapsed().as_secs_f64());
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok((sorted[sorted.len() / 2], runs))
}

fn report(workload: &str, unit: &str, per_run: f64, (secs, runs): (f64, Vec<f64>)) {
    println!(
        "{{\"workload\": \"{workload}\", \"seconds\": {secs:.6}, \"{unit}\": {:.1}, \"runs\": {runs:?}, \"side\": \"forkpool-mpi\"}}",
        per_run / secs
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(pool) = Pool::world()? else {
        return Ok(());
    };
    let n = args.tasks;
    let per_task = median(args.reps, || {
        let mut count = 0u64;
        for r in pool.imap(noop, 0..n, 1) {
            r?;
            count += 1;
        }
        anyhow::ensure!(count == n, "{count} of {n} results");
        Ok(())
    })?;
    report(
        &format!("per-task, {n} tasks, chunksize 1"),
        "tasks_per_s",
        n as f64,
        per_task,
    );

    let m = args.items;
    let map = median(args.reps, || {
        let out = pool.map(square, 0..m)?;
        anyhow::ensure!(out.len() as u64 == m && out[7] == 49, "wrong map result");
        Ok(())
    })?;
    report(
        &format!("map {m} tiny items, default chunksize"),
        "items_per_s",
        m as f64,
        map,
    );

    let (rows, cols) = (args.rows, args.cols);
    let fill = median(args.reps, || {
        let array = pool.node_array::<f64>(&[rows, cols])?;
        let per_block = rows.div_ceil(4 * pool.ranks()).max(1);
        let tasks: Vec<_> = (0..rows)
            .step_by(per_block)
            .map(|s| {
                let e = (s + per_block).min(rows);
                (array.node_of_row(s), (array.clone(), s, e, 42u64))
            })
            .collect();
        let mut filled = 0;
        for r in pool.imap_on(fill_block, tasks, 1, false) {
            filled += r?;
        }
        anyhow::ensure!(filled == rows, "{filled} of {rows} rows");
        Ok(())
    })?;
    report(
        &format!("random fill {rows} x {cols} f64, new node-shared array"),
        "bytes_per_s",
        (rows * cols * 8) as f64,
        fill,
    );
    Ok(())
}
