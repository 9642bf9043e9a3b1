//! The `demos random-fill` demo across MPI ranks: a large random array
//! filled by the worker ranks, one random stream per row (the `demos`
//! row kernel, whatever generator it uses), so the array (and
//! its digest) is the one the single-machine demo makes for the same seed
//! and shape, whatever the number of ranks or nodes.
//!
//! ```text
//! cargo build --release -p forkpool-mpi --features mpi --examples
//! mpirun -n 4 target/release/examples/random_fill --rows 2000 --cols 32000 --seed 42
//! cargo run --release -p demos -- random-fill --rows 2000 --cols 32000 --seed 42
//! ```
//!
//! The array is a [`NodeArray`]: one copy per node, its rows split over
//! the nodes; each block of rows is filled by a rank of the node that
//! holds it. Rank 0 then reads every row in order (its own node's from
//! the shared window, the others' through tasks on their nodes), folds it
//! into the digest, and checks it against a serial regeneration.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use demos::random_fill::{Digest, fill_row};
use forkpool_mpi::{NodeArray, Pool};

/// Options (those of `demos random-fill` that shape the array).
#[derive(Parser, Debug)]
struct Args {
    /// Rows of the array.
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array.
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
    /// Master seed: the key of every row's stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

// ANCHOR: fill
/// What a worker rank reports for one block of rows.
type Filled = (u32, usize, Duration);

/// On a worker rank: fills rows `[start, end)` of the node-shared array,
/// each from its own stream (`demos`' `fill_row`, the demo's own kernel).
fn fill_block((array, start, end, seed): (NodeArray<f64>, usize, usize, u64)) -> Filled {
    let t0 = Instant::now();
    array.prefault_rows(start..end);
    let mut row = vec![0.0; array.row_len()];
    for r in start..end {
        fill_row(seed, r as u64, &mut row);
        array.write_row(r, &row);
    }
    (std::process::id(), end - start, t0.elapsed())
}
// ANCHOR_END: fill

/// On a rank of another node: rows `[start, end)`, for rank 0's digest.
fn read_block((array, start, end): (NodeArray<f64>, usize, usize)) -> Vec<f64> {
    let cols = array.row_len();
    let mut out = vec![0.0; (end - start) * cols];
    for (i, r) in (start..end).enumerate() {
        array.read_row(r, &mut out[i * cols..(i + 1) * cols]);
    }
    out
}

/// Row blocks of about `per_block` rows over each node's rows, tagged
/// with the node.
fn blocks(array: &NodeArray<f64>, per_block: usize) -> Vec<(usize, (usize, usize))> {
    let mut out = Vec::new();
    for node in 0..array.nodes() {
        let rows = array.rows_of_node(node);
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + per_block).min(rows.end);
            out.push((node, (start, end)));
            start = end;
        }
    }
    out
}

fn fact(label: &str, value: impl std::fmt::Display) {
    println!("   {label:<28} {value}");
}

fn gib_per_s(bytes: u64, took: Duration) -> String {
    format!(
        "{:.2} GiB/s",
        bytes as f64 / took.as_secs_f64().max(1e-9) / (1u64 << 30) as f64
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(pool) = Pool::world()? else {
        return Ok(());
    };
    let (rows, cols, seed) = (args.rows, args.cols, args.seed);
    ensure!(rows > 0 && cols > 0, "--rows and --cols must be at least 1");
    let size = (rows * cols * 8) as u64;
    println!("== random-fill on MPI: one random stream per row, rows split over the nodes ==");
    fact(
        "array",
        format!(
            "{rows} x {cols} f64 = {:.1} MiB",
            size as f64 / (1 << 20) as f64
        ),
    );
    fact(
        "ranks",
        format!("1 + {} workers on {} node(s)", pool.ranks(), pool.nodes()),
    );
    fact(
        "seed",
        format!("{seed} (demos' row kernel, stream = row index)"),
    );

    // ANCHOR: create
    let t0 = Instant::now();
    let array = pool.node_array::<f64>(&[rows, cols])?;
    fact(
        "create (shared window)",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );
    // ANCHOR_END: create

    // ANCHOR: map
    let per_block = rows.div_ceil(4 * pool.ranks().max(1)).max(1);
    let tasks: Vec<_> = blocks(&array, per_block)
        .into_iter()
        .map(|(node, (s, e))| (node, (array.clone(), s, e, seed)))
        .collect();
    let t0 = Instant::now();
    let mut rows_by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    let mut worker_time = Duration::ZERO;
    for filled in pool.imap_on(fill_block, tasks, 1, false) {
        let (pid, n, took) = filled.context("a worker rank failed")?;
        *rows_by_pid.entry(pid).or_default() += n;
        worker_time += took;
    }
    let took = t0.elapsed();
    // ANCHOR_END: map
    fact(
        "parallel fill",
        format!("{:.3} s   {}", took.as_secs_f64(), gib_per_s(size, took)),
    );
    fact(
        "  worker time, summed",
        format!("{:.3} s", worker_time.as_secs_f64()),
    );
    let per_pid: Vec<String> = rows_by_pid.values().map(|r| r.to_string()).collect();
    fact("  rows per worker rank", per_pid.join(" + "));

    // ANCHOR: verify
    // Every row in order: digest, range, and a serial regeneration.
    let t0 = Instant::now();
    let mut digest = Digest::new();
    let mut expect = vec![0.0; cols];
    let (mut sum, mut bad, mut starts) = (0.0f64, 0usize, HashSet::new());
    let mut check = |r: usize, row: &[f64]| {
        digest.update(row);
        fill_row(seed, r as u64, &mut expect);
        if row
            .iter()
            .zip(&expect)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            bad += 1;
        }
        sum += row.iter().sum::<f64>();
        starts.insert(row[0].to_bits());
        ensure!(
            row.iter().all(|x| (0.0..1.0).contains(x)),
            "row {r} holds values outside [0, 1)"
        );
        Ok::<(), anyhow::Error>(())
    };
    let mut row = vec![0.0; cols];
    for node in 0..array.nodes() {
        let here = array.rows_of_node(node);
        if node == pool.layout()[0].node {
            for r in here {
                array.read_row(r, &mut row);
                check(r, &row)?;
            }
        } else {
            let step = ((8 << 20) / (cols * 8)).max(1);
            let reads: Vec<_> = (here.start..here.end)
                .step_by(step)
                .map(|s| (node, (array.clone(), s, (s + step).min(here.end))))
                .collect();
            let mut r = here.start;
            for block in pool.imap_on(read_block, reads, 1, true) {
                for chunk in block.context("reading another node's rows")?.chunks(cols) {
                    check(r, chunk)?;
                    r += 1;
                }
            }
        }
    }
    let digest = digest.finish();
    fact(
        "read, digest, check serially",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );
    let mean = sum / (rows * cols) as f64;
    ensure!(
        bad == 0,
        "{bad} rows differ from a serial fill of the same seed"
    );
    let tolerance = (6.0 * 0.2887 / ((rows * cols) as f64).sqrt()).max(0.01);
    ensure!(
        (mean - 0.5).abs() < tolerance,
        "the mean is {mean}, not about 0.5"
    );
    ensure!(
        starts.len() == rows,
        "only {} distinct first values over {rows} rows",
        starts.len()
    );
    let workers = pool.ranks();
    ensure!(
        rows_by_pid.len() == workers.min(per_block_count(rows, per_block)),
        "{} of {workers} worker ranks filled rows",
        rows_by_pid.len()
    );
    // ANCHOR_END: verify
    drop(array);
    drop(pool);
    println!("array digest {digest:016x}");
    println!(
        "verified: {} values filled by {} worker ranks bit-identical to a serial fill, in [0, 1), \
         mean {mean:.4}, {rows} distinct row streams",
        rows * cols,
        rows_by_pid.len()
    );
    Ok(())
}

/// The number of blocks `rows` make at `per_block` rows each.
fn per_block_count(rows: usize, per_block: usize) -> usize {
    rows.div_ceil(per_block)
}
