//! The `pid-fill` demo, run through the real binary at a small size.

mod common;

use common::demos;

#[test]
fn pid_fill_verifies_and_shows_one_copy() {
    let run = demos(&[
        "pid-fill",
        "--rows",
        "64",
        "--cols",
        "50000",
        "--processes",
        "3",
    ]);
    run.assert_ok();
    assert_eq!(
        run.verified(),
        "no 42 left, 3200000 items counted, 3 workers did work, one copy in memory"
    );
    let table = run.memory_table("memory while the workers hold the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "parent", "zygote", "worker 1", "worker 2", "worker 3", "total"
        ]
    );
    // The parent filled the whole array (25.6 MB here): its RSS holds it;
    // PSS summed over everyone is about one array, not four.
    let array = 64 * 50_000 * 8;
    let (_, _, parent) = &table[0];
    assert!(
        parent[0] >= array,
        "parent RSS {} < array {array}",
        parent[0]
    );
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] < 2 * array,
        "summed PSS {} is not one copy of {array}",
        total[1]
    );
    // The pid/count table: one line per worker, counts summing to every item.
    let counts: u64 = run
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1)
        .take(3)
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counts, 64 * 50_000);
}

#[test]
fn pid_fill_backed_by_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("array.f64");
    let run = demos(&[
        "pid-fill",
        "--rows",
        "16",
        "--cols",
        "4096",
        "--processes",
        "2",
        "--file",
        path.to_str().unwrap(),
    ]);
    run.assert_ok();
    assert!(
        run.verified()
            .starts_with("no 42 left, 65536 items counted, 2 workers")
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * 4096 * 8);
}

#[test]
fn pid_fill_refuses_bad_sizes_clearly() {
    let run = demos(&["pid-fill", "--rows", "1", "--processes", "4"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("at least one row per process"),
        "{}",
        run.stderr
    );
}
