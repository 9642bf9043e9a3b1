//! The `fork-cow` demo, run through the real binary at a small size.

mod common;

use common::{Run, demos};

const ROWS: u64 = 64;
const COLS: u64 = 32_768;
const ARRAY: u64 = ROWS * COLS * 8; // 16 MiB

fn fork_cow(extra: &[&str]) -> Run {
    let mut args = vec![
        "fork-cow".to_string(),
        "--rows".into(),
        ROWS.to_string(),
        "--cols".into(),
        COLS.to_string(),
        "--processes".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    demos(&args)
}

/// Checks the table taken while the workers only read: every process maps
/// the whole array, no worker holds a private copy, and all of them
/// together hold about one array.
fn check_read_table(run: &Run) {
    let table = run.memory_table("memory while the workers read the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    for (_, role, usage) in &table[..4] {
        assert!(
            usage[0] >= ARRAY,
            "{role}: RSS {} < array {ARRAY}",
            usage[0]
        );
    }
    for (_, role, usage) in &table[2..4] {
        assert!(
            usage[3] < ARRAY / 8,
            "{role}: private {} after only reading an array of {ARRAY}",
            usage[3]
        );
    }
    // Private anonymous pages, summed over the processes: one array, and
    // the processes' own heaps.
    let ratio = run.times_the_array("anonymous pages, summed PSS");
    assert!((0.95..1.25).contains(&ratio), "{ratio}x the array");
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] < ARRAY * 2,
        "summed PSS {} for an array of {ARRAY}",
        total[1]
    );
}

#[test]
fn fork_cow_readers_share_the_inherited_pages() {
    let run = fork_cow(&[]);
    run.assert_ok();
    let verified = run.verified();
    assert!(
        verified.starts_with("64 row sums exact, workers' private memory near zero"),
        "{verified}"
    );
    assert!(verified.ends_with("one copy in memory"), "{verified}");
    check_read_table(&run);
    assert!(
        !run.stdout.contains("memory after the workers wrote"),
        "no writes without --write"
    );
}

#[test]
fn fork_cow_writers_get_private_copies_the_parent_never_sees() {
    let run = fork_cow(&["--write"]);
    run.assert_ok();
    let verified = run.verified();
    assert!(
        verified.ends_with("the parent's array unchanged"),
        "{verified}"
    );
    check_read_table(&run);

    let before = run.memory_table("memory while the workers read the array");
    let after = run.memory_table("memory after the workers wrote their rows");
    assert_eq!(after.len(), 5);
    // The same workers, each now holding private copies of the pages it
    // wrote: together, about the whole array.
    let mut grown = 0;
    for (b, a) in before[2..4].iter().zip(&after[2..4]) {
        assert_eq!(a.0, b.0, "the worker was replaced");
        grown += a.2[3] - b.2[3];
    }
    assert!(
        (ARRAY * 9 / 10..=ARRAY * 11 / 10 + (8 << 20)).contains(&grown),
        "workers' private memory grew by {grown} after writing an array of {ARRAY}"
    );
    // Each worker's copied pages match what it wrote.
    let mut written = 0;
    for worker in ["worker 1", "worker 2"] {
        let line = run.fact(&format!("{worker} copied"));
        let (copied, wrote) = line
            .strip_suffix(" written")
            .and_then(|l| l.split_once(" of pages for "))
            .unwrap_or_else(|| panic!("{line}"));
        let size = |s: &str| {
            let (n, unit) = s.split_once(' ').unwrap();
            common::parse_size(n, unit)
        };
        let (copied, wrote) = (size(copied), size(wrote));
        assert!(
            copied.abs_diff(wrote) <= wrote / 10 + (1 << 20),
            "{worker}: {line}"
        );
        written += wrote;
    }
    assert!(written.abs_diff(ARRAY) <= ARRAY / 100, "written {written}");
    // The parent's own memory did not grow: the copies are the workers'.
    let (_, _, parent_before) = &before[0];
    let (_, _, parent_after) = &after[0];
    assert!(parent_after[3] < parent_before[3] + (4 << 20));
}

#[test]
fn fork_cow_refuses_fewer_rows_than_processes_clearly() {
    let run = demos(&["fork-cow", "--rows", "1", "--processes", "2"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("at least one row per process"),
        "{}",
        run.stderr
    );
}

#[test]
fn fork_cow_refuses_rows_too_long_for_exact_sums() {
    let run = demos(&["fork-cow", "--rows", "100000", "--cols", "1000000"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("exact row sums"), "{}", run.stderr);
}
