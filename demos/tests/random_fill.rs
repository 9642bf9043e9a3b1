//! The `random-fill` demo, run through the real binary at a small size, and
//! its row kernel called directly.

mod common;

use common::demos;

// Small: the test binary is unoptimised, and generates about 15 MB/s.
const ROWS: u64 = 32;
const COLS: u64 = 20_000;

#[test]
fn random_fill_is_bit_identical_whatever_the_worker_count() {
    let run = demos(&[
        "random-fill",
        "--rows",
        "32",
        "--cols",
        "20000",
        "--processes",
        "2",
        "--check-processes",
        "1,3",
    ]);
    run.assert_ok();
    let verified = run.verified();
    assert!(
        verified.starts_with(
            "serial and parallel fills bit-identical with 2 and with 1, 3 workers, \
             640000 values in [0, 1)"
        ),
        "{verified}"
    );
    assert!(verified.ends_with("32 distinct row streams"), "{verified}");
    // The phases a reader wants: both fills and the speedup.
    assert!(run.fact("serial fill").ends_with("/s"));
    assert!(run.fact("parallel fill, 2 workers").ends_with("/s"));
    assert!(run.fact("parallel fill, 1 worker").ends_with("/s"));
    assert!(run.fact("parallel fill, 3 workers").ends_with("/s"));
    assert!(run.fact("speedup").contains("x on 2 processes"));
    // Both workers filled rows (how many each depends on the scheduling).
    let split: Vec<u64> = run
        .fact("rows per worker")
        .split(" + ")
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(split.len(), 2, "{split:?}");
    assert_eq!(split.iter().sum::<u64>(), ROWS);

    let table = run.memory_table("memory while the workers hold the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    // Two arrays of 5.1 MB (serial and parallel), each in memory once: the
    // parent holds both, each worker the rows it filled, and the PSS summed
    // over everyone is about two arrays, not one per process.
    let array = ROWS * COLS * 8;
    let (_, _, parent) = &table[0];
    assert!(
        parent[0] >= 2 * array,
        "parent RSS {} < 2 x {array}",
        parent[0]
    );
    let fewest = array / ROWS * split.iter().min().unwrap();
    for (_, role, worker) in &table[2..4] {
        assert!(
            worker[0] >= fewest,
            "{role} RSS {} < the rows the least busy worker filled ({fewest})",
            worker[0]
        );
    }
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] >= 2 * array * 9 / 10 && total[1] < 2 * array + (16 << 20),
        "summed PSS {} is not two arrays of {array}",
        total[1]
    );
}

/// The digest the demo prints for the array.
fn digest(args: &[&str]) -> String {
    let mut all = vec!["random-fill", "--rows", "24", "--cols", "3000"];
    all.extend_from_slice(args);
    let run = demos(&all);
    run.assert_ok();
    run.fact("array digest")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn the_same_seed_gives_the_same_array_in_every_run() {
    let one = digest(&["--processes", "1", "--check-processes", "2"]);
    let four = digest(&["--processes", "4", "--check-processes", "3"]);
    assert_eq!(one, four, "the array depends on the number of workers");
    let other_seed = digest(&["--processes", "1", "--seed", "7", "--check-processes", "2"]);
    assert_ne!(one, other_seed, "the seed does not change the array");
}

#[test]
fn fill_row_is_philox_block_by_block_keyed_by_the_seed() {
    let (seed, row) = (0x0123_4567_89ab_cdefu64, 9u64);
    let mut out = vec![0.0; 1501];
    demos::random_fill::fill_row(seed, row, &mut out);
    // Element 2b and 2b + 1 of the row: the two halves of block b of the
    // row's stream (counter = block, row), as doubles from the top 53 bits.
    let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
    for (i, x) in out.iter().enumerate() {
        let block = (i / 2) as u64;
        let [x0, x1, x2, x3] = demos::philox::philox4x32_10(
            [
                block as u32,
                (block >> 32) as u32,
                row as u32,
                (row >> 32) as u32,
            ],
            [seed as u32, (seed >> 32) as u32],
        );
        let bits = if i % 2 == 0 {
            u64::from(x0) | u64::from(x1) << 32
        } else {
            u64::from(x2) | u64::from(x3) << 32
        };
        assert_eq!(x.to_bits(), unit(bits).to_bits(), "element {i}");
    }
    // A prefix of a longer row is the shorter row: the stream, not the
    // length, decides the numbers.
    let mut short = vec![0.0; 700];
    demos::random_fill::fill_row(seed, row, &mut short);
    assert_eq!(short[..], out[..700]);
}

#[test]
fn random_fill_refuses_bad_input_clearly() {
    let run = demos(&["random-fill", "--rows", "1", "--processes", "2"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("at least one row per process"),
        "{}",
        run.stderr
    );
    let run = demos(&["random-fill", "--rows", "8", "--check-processes", "2,0"]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("--check-processes takes worker counts of at least 1"),
        "{}",
        run.stderr
    );
    // Too large for this machine: said before anything is allocated.
    let run = demos(&["random-fill", "--rows", "1000000", "--cols", "1000000"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("holding a serial and a parallel array")
            && run.stderr.contains("is available"),
        "{}",
        run.stderr
    );
}
