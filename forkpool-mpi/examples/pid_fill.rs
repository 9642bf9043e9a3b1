//! The `demos pid-fill` demo (the notes' book example) across MPI ranks:
//! a 2-D array of doubles held once per node, filled with 42, then every
//! row set by a worker rank to its pid; then every item is counted (no 42
//! left, every value a worker's pid, every worker did rows) and a memory
//! table per node shows one copy of the node's rows, however many ranks
//! map it.
//!
//! ```text
//! cargo build --release -p forkpool-mpi --features mpi --examples
//! mpirun -n 4 target/release/examples/pid_fill --rows 2000 --cols 32000
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use forkpool_mpi::{NodeArray, Pool};
use forkpool_shm::{MemoryReport, Pid};

/// The value the array starts with (the notes' 42).
const DEFAULT_VALUE: f64 = 42.0;

/// Options.
#[derive(Parser, Debug)]
struct Args {
    /// Rows of the array (the notes: 10000).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Columns of the array (the notes: 320000).
    #[arg(long, default_value_t = 32_000)]
    cols: usize,
}

/// On a worker rank: fills rows `[start, end)` with `value`.
fn fill_block((array, start, end, value): (NodeArray<f64>, usize, usize, f64)) {
    array.prefault_rows(start..end);
    for r in start..end {
        array.fill_row(r, value);
    }
}

// ANCHOR: worker
/// The notes' `worker_fn`: checks that row `idx` still holds the default
/// value, then overwrites it with this rank's pid.
fn worker_fn((array, idx): (NodeArray<f64>, usize)) -> (u32, bool) {
    let pid = std::process::id();
    let mut row = vec![0.0; array.row_len()];
    array.read_row(idx, &mut row);
    let untouched = row.iter().all(|&v| v == DEFAULT_VALUE);
    array.fill_row(idx, f64::from(pid));
    (pid, untouched)
}
// ANCHOR_END: worker

/// On a rank of the node: how many times each value occurs in rows
/// `[start, end)` (by the value's bits).
fn count_block((array, start, end): (NodeArray<f64>, usize, usize)) -> BTreeMap<u64, u64> {
    let mut counts = BTreeMap::new();
    let mut row = vec![0.0; array.row_len()];
    for r in start..end {
        array.read_row(r, &mut row);
        for v in &row {
            *counts.entry(v.to_bits()).or_default() += 1;
        }
    }
    counts
}

/// On a rank of a node: the memory table of the node's ranks, and the
/// summed PSS of shared pages (shared memory and files).
fn node_memory(ranks: Vec<(i32, String)>) -> Result<(String, u64), String> {
    let mut report = MemoryReport::new();
    for (pid, role) in ranks {
        report
            .add(Pid::from_raw(pid), role)
            .map_err(|e| e.to_string())?;
    }
    let total = report.total();
    Ok((report.to_string(), total.pss_shmem + total.pss_file))
}

/// Row blocks of about `per_block` rows over each node's rows.
fn blocks(array: &NodeArray<f64>, per_block: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for node in 0..array.nodes() {
        let rows = array.rows_of_node(node);
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + per_block).min(rows.end);
            out.push((node, start, end));
            start = end;
        }
    }
    out
}

fn fact(label: &str, value: impl std::fmt::Display) {
    println!("   {label:<28} {value}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(pool) = Pool::world()? else {
        return Ok(());
    };
    let (rows, cols) = (args.rows, args.cols);
    ensure!(rows > 0 && cols > 0, "--rows and --cols must be at least 1");
    let size = (rows * cols * 8) as u64;
    println!("== pid-fill on MPI: one copy per node, each row set to a worker rank's pid ==");
    fact("array", format!("{rows} x {cols} f64 = {}", mib(size)));
    fact(
        "ranks",
        format!("1 + {} workers on {} node(s)", pool.ranks(), pool.nodes()),
    );

    let t0 = Instant::now();
    let array = pool.node_array::<f64>(&[rows, cols])?;
    fact(
        "create (shared window)",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );
    let per_block = rows.div_ceil(4 * pool.ranks().max(1)).max(1);
    let t0 = Instant::now();
    let fills: Vec<_> = blocks(&array, per_block)
        .into_iter()
        .map(|(node, s, e)| (node, (array.clone(), s, e, DEFAULT_VALUE)))
        .collect();
    for done in pool.imap_on(fill_block, fills, 1, false) {
        done.context("filling with 42")?;
    }
    fact(
        "fill with 42",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );

    // ANCHOR: map
    let t0 = Instant::now();
    let chunksize = (rows / (pool.ranks().max(1) * 16)).max(1);
    let tasks: Vec<_> = (0..rows)
        .map(|r| (array.node_of_row(r), (array.clone(), r)))
        .collect();
    let mut rows_by_pid: BTreeMap<u32, u64> = BTreeMap::new();
    for outcome in pool.imap_on(worker_fn, tasks, chunksize, false) {
        let (pid, untouched) = outcome.context("a worker rank failed")?;
        ensure!(untouched, "rank pid {pid} found its row already written");
        *rows_by_pid.entry(pid).or_default() += 1;
    }
    // ANCHOR_END: map
    fact(
        "workers write their pids",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );

    // Memory per node, while every rank still maps the array.
    let mut node_ranks: Vec<Vec<(i32, String)>> = vec![Vec::new(); pool.nodes()];
    for r in pool.layout() {
        let role = if r.rank == 0 {
            "rank 0 (pool)".to_owned()
        } else {
            format!("rank {}", r.rank)
        };
        node_ranks[r.node].push((r.pid, role));
    }
    let asks: Vec<_> = node_ranks.into_iter().enumerate().collect();
    let mut tables = Vec::new();
    for (node, table) in pool.imap_on(node_memory, asks, 1, true).enumerate() {
        let (table, shared) = table
            .context("a node's memory table")?
            .map_err(|e| anyhow::anyhow!("node {node}'s memory table: {e}"))?;
        tables.push((node, table, shared));
    }

    // Count every item, node by node, in parallel.
    let t0 = Instant::now();
    let counts: Vec<_> = blocks(&array, per_block)
        .into_iter()
        .map(|(node, s, e)| (node, (array.clone(), s, e)))
        .collect();
    let mut by_value: BTreeMap<u64, u64> = BTreeMap::new();
    for c in pool.imap_on(count_block, counts, 1, false) {
        for (bits, n) in c.context("counting")? {
            *by_value.entry(bits).or_default() += n;
        }
    }
    fact(
        "count every item",
        format!("{:.3} s", t0.elapsed().as_secs_f64()),
    );

    for (node, table, shared) in &tables {
        let hold = array.rows_of_node(*node).len() as u64 * cols as u64 * 8;
        println!(
            "memory on node {node} ({} rows, {}):",
            array.rows_of_node(*node).len(),
            mib(hold)
        );
        for line in table.lines() {
            println!("   {line}");
        }
        fact(
            "  shared pages, summed PSS",
            format!(
                "{} = {:.3}x the node's rows",
                mib(*shared),
                *shared as f64 / hold.max(1) as f64
            ),
        );
        // One copy: the node's rows once (plus the mapped program files).
        ensure!(
            *shared <= hold + hold / 20 + (64 << 20),
            "node {node}: {} of shared pages for {} of rows: more than one copy",
            mib(*shared),
            mib(hold)
        );
        ensure!(
            *shared >= hold - hold / 20,
            "node {node}: {} of shared pages for {} of rows: the rows are not in shared memory",
            mib(*shared),
            mib(hold)
        );
    }

    let workers: Vec<u32> = pool.layout()[1..].iter().map(|r| r.pid as u32).collect();
    let total: u64 = by_value.values().sum();
    ensure!(
        total == (rows * cols) as u64,
        "{total} items counted, not {}",
        rows * cols
    );
    ensure!(
        !by_value.contains_key(&DEFAULT_VALUE.to_bits()),
        "{} items still hold 42",
        by_value[&DEFAULT_VALUE.to_bits()]
    );
    for (&bits, &n) in &by_value {
        let pid = f64::from_bits(bits) as u32;
        ensure!(
            workers.contains(&pid) && f64::from(pid).to_bits() == bits,
            "{n} items hold {}, no worker rank's pid",
            f64::from_bits(bits)
        );
        ensure!(
            n == rows_by_pid.get(&pid).copied().unwrap_or(0) * cols as u64,
            "pid {pid}: {n} items, but it wrote {} rows",
            rows_by_pid.get(&pid).copied().unwrap_or(0)
        );
    }
    ensure!(
        rows_by_pid.len() == workers.len().min(rows),
        "{} of {} worker ranks did rows",
        rows_by_pid.len(),
        workers.len()
    );
    let per_pid: Vec<String> = rows_by_pid.values().map(|r| r.to_string()).collect();
    fact("rows per worker rank", per_pid.join(" + "));
    drop(array);
    drop(pool);
    println!(
        "verified: {total} items counted, no 42 left, every row one worker rank's pid, \
         {} worker ranks did rows, one copy of the rows per node",
        rows_by_pid.len()
    );
    Ok(())
}
