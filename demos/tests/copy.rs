//! The `copy` demo, run through the real binary at a small size.

mod common;

use common::{Run, demos};

/// Runs the `copy` demo the `way` given on a 64 x 8192 array of doubles
/// (4 MiB) with 2 processes, checks it succeeded; the run and the array's
/// size in bytes.
fn copy_demo(way: &str) -> (Run, u64) {
    let (rows, cols) = (64u64, 8192u64);
    let run = demos(&[
        "copy",
        "--rows",
        &rows.to_string(),
        "--cols",
        &cols.to_string(),
        "--processes",
        "2",
        "--way",
        way,
    ]);
    run.assert_ok();
    (run, rows * cols * 8)
}

#[test]
fn copy_multiplies_the_memory_by_the_tasks() {
    let (run, array) = copy_demo("serialised");
    let verified = run.verified();
    let ratio: f64 = verified
        .strip_prefix(
            "64 row sums match the serial ones, 2 copies serialised, every worker holds at least ",
        )
        .and_then(|r| r.strip_suffix("x the array privately"))
        .unwrap_or_else(|| panic!("{verified}"))
        .parse()
        .unwrap();
    assert!(ratio >= 0.9, "{verified}");
    assert_eq!(
        run.fact("bytes serialised"),
        "2 x 4.0 MiB = 8.0 MiB (serialised: a length and 8 bytes a double)"
    );
    let table = run.memory_table("memory while every worker holds its copy");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    // The parent holds the array, and every worker a private copy of it (or
    // two: the bytes received and the array decoded from them)...
    for (_, role, usage) in [&table[0], &table[2], &table[3]] {
        assert!(
            usage[3] >= array * 9 / 10,
            "{role}: private {} for an array of {array}",
            usage[3]
        );
    }
    // ...so the pool holds three arrays or more, where sharing holds one.
    let (_, _, total) = table.last().unwrap();
    assert!(
        total[1] >= array * 27 / 10,
        "summed PSS {} for an array of {array} sent to 2 workers",
        total[1]
    );
}

#[test]
fn a_buffer_sent_by_value_is_mapped_by_every_worker_not_copied() {
    let (run, array) = copy_demo("buffer");
    assert_eq!(
        run.fact("bytes serialised"),
        "2 x 9 B = 18 B (the buffer's length; its descriptor travels beside the task)"
    );
    let table = run.memory_table("memory while every worker holds the buffer");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    // No worker made a copy: each one's private memory is at most the rows
    // it read (half the array) and its own few pages, far below a copy plus
    // the bytes it came in (what the serialised way costs).
    for (_, role, usage) in [&table[2], &table[3]] {
        assert!(
            usage[3] < array * 3 / 4,
            "{role}: private {} for an array of {array}",
            usage[3]
        );
    }
    // Together the workers map the array once, as shared memory.
    let shmem = run.times_the_array("workers' shared memory");
    assert!((0.9..=1.1).contains(&shmem), "{shmem}");
    assert!(run.times_the_array("workers' anonymous memory") < 0.5);
    assert!(
        run.verified().contains("no worker holds a copy"),
        "{}",
        run.verified()
    );
}

#[test]
fn copy_refuses_what_would_not_fit_and_says_why() {
    // 4 copies and more of 100 000 x 320 000 doubles (238 GiB).
    let run = demos(&["copy", "--rows", "100000", "--cols", "320000"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("memory multiplies"), "{}", run.stderr);
    assert!(run.stderr.contains("available"), "{}", run.stderr);
}

#[test]
fn copy_refuses_zero_processes_clearly() {
    let run = demos(&["copy", "--processes", "0"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("--processes >= 1"), "{}", run.stderr);
}
