//! The `raw-array` demo, run through the real binary.

mod common;

use common::demos;

#[test]
fn raw_array_at_the_notes_size_populates_every_block() {
    let run = demos(&["raw-array"]);
    run.assert_ok();
    let verified = run.verified();
    assert!(
        verified.starts_with("2000 rows each hold their block's offset, 20 blocks populated by "),
        "{verified}"
    );
    assert!(verified.ends_with("one copy in memory"), "{verified}");
    assert_eq!(
        run.fact("final_arr"),
        "row 0: 0, row 100: 100, row 1999: 1900"
    );
    assert_eq!(run.fact("tasks"), "20 blocks of 100 rows on 4 processes");
    let table = run.memory_table("memory while the workers hold the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "parent", "zygote", "worker 1", "worker 2", "worker 3", "worker 4", "total"
        ]
    );
    // The blocks were done by the pool's workers, and by no one else.
    let workers: Vec<i64> = table[2..6].iter().map(|(pid, _, _)| *pid).collect();
    for entry in run.fact("blocks per worker pid").split(", ") {
        let (pid, _) = entry.split_once(": ").unwrap();
        assert!(
            workers.contains(&pid.parse().unwrap()),
            "{entry} not a worker"
        );
    }
}

#[test]
fn raw_array_keeps_one_copy_of_a_larger_array() {
    let (rows, cols) = (512u64, 4096u64);
    let run = demos(&[
        "raw-array",
        "--rows",
        &rows.to_string(),
        "--cols",
        &cols.to_string(),
        "--blocksize",
        "64",
        "--processes",
        "2",
    ]);
    run.assert_ok();
    assert!(
        run.verified()
            .starts_with("512 rows each hold their block's offset, 8 blocks")
    );
    let array = rows * cols * 8; // 16 MiB
    let table = run.memory_table("memory while the workers hold the array");
    let (_, _, parent) = &table[0];
    assert!(
        parent[0] >= array,
        "parent RSS {} < array {array}",
        parent[0]
    );
    // The workers wrote every row, yet hold no private copy of them...
    let written: u64 = table[2..4].iter().map(|(_, _, w)| w[0]).sum();
    assert!(written >= array, "workers' RSS {written} < array {array}");
    for (_, role, w) in &table[2..4] {
        assert!(
            w[3] < array / 4,
            "{role} private {} for an array of {array}",
            w[3]
        );
    }
    // ...and the whole pool holds about one array, not one per process:
    // the array's own pages, summed over the processes, make one copy.
    let ratio = run.times_the_array("array pages, summed PSS");
    assert!((0.95..1.05).contains(&ratio), "{ratio}x the array");
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] < array * 7 / 4,
        "summed PSS {} for an array of {array}",
        total[1]
    );
}

#[test]
fn raw_array_with_a_last_block_shorter() {
    let run = demos(&[
        "raw-array",
        "--rows",
        "250",
        "--blocksize",
        "100",
        "--processes",
        "2",
    ]);
    run.assert_ok();
    assert!(
        run.verified()
            .starts_with("250 rows each hold their block's offset, 3 blocks"),
        "{}",
        run.verified()
    );
    assert_eq!(
        run.fact("final_arr"),
        "row 0: 0, row 100: 100, row 249: 200"
    );
}

#[test]
fn raw_array_refuses_a_zero_blocksize_clearly() {
    let run = demos(&["raw-array", "--blocksize", "0"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("--blocksize"), "{}", run.stderr);
    assert!(run.stderr.contains("at least 1"), "{}", run.stderr);
}
