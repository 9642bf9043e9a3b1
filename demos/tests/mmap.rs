//! The `mmap` demo, run through the real binary at a small size.

mod common;

use common::demos;

#[test]
fn mmap_workers_fill_one_shared_copy() {
    let (rows, cols) = (64u64, 32_768u64); // 16 MiB
    let run = demos(&[
        "mmap",
        "--rows",
        &rows.to_string(),
        "--cols",
        &cols.to_string(),
        "--processes",
        "2",
    ]);
    run.assert_ok();
    let verified = run.verified();
    assert!(
        verified.starts_with("2097152 values as written, rows filled by "),
        "{verified}"
    );
    assert!(
        verified.ends_with("of 2 workers, one copy in memory"),
        "{verified}"
    );
    let table = run.memory_table("memory while the workers hold the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    let array = rows * cols * 8;
    // The parent read every value, the workers wrote them: all of them map
    // the array's pages, and none holds a private copy.
    let (_, _, parent) = &table[0];
    assert!(
        parent[0] >= array,
        "parent RSS {} < array {array}",
        parent[0]
    );
    let written: u64 = table[2..4].iter().map(|(_, _, w)| w[0]).sum();
    assert!(written >= array, "workers' RSS {written} < array {array}");
    // The parent's private memory is its own few MiB (more in a debug build).
    assert!(parent[3] < array / 2, "parent: private {}", parent[3]);
    for (_, role, usage) in &table[2..4] {
        assert!(
            usage[3] < array / 8,
            "{role}: private {} for an array of {array}",
            usage[3]
        );
    }
    // Summed PSS: one array (and the processes' own few MiB), not two or three.
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] >= array && total[1] < array * 7 / 4,
        "summed PSS {} for an array of {array}",
        total[1]
    );
    // The array's own pages, summed over the processes: one copy.
    let ratio = run.times_the_array("array pages, summed PSS");
    assert!((0.95..1.05).contains(&ratio), "{ratio}x the array");
    // Every row was filled by one of the pool's workers.
    let workers: Vec<i64> = table[2..4].iter().map(|(pid, _, _)| *pid).collect();
    let mut filled = 0;
    for entry in run.fact("rows per worker pid").split(", ") {
        let (pid, n) = entry.split_once(": ").unwrap();
        assert!(workers.contains(&pid.parse().unwrap()), "{entry}");
        filled += n.parse::<u64>().unwrap();
    }
    assert_eq!(filled, rows);
}

#[test]
fn mmap_refuses_fewer_rows_than_processes_clearly() {
    let run = demos(&["mmap", "--rows", "3", "--processes", "4"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("at least one row per process"),
        "{}",
        run.stderr
    );
}

#[test]
fn mmap_refuses_an_array_larger_than_memory_and_names_the_file_backed_way() {
    // 10 000 000 x 320 000 doubles: 23.3 TiB.
    let run = demos(&["mmap", "--rows", "10000000", "--cols", "320000"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("23.3 TiB"), "{}", run.stderr);
    assert!(run.stderr.contains("memmap demo"), "{}", run.stderr);
}
