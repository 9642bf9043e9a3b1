//! The `memory-limit` demo, run through the real binary: the refusal at the
//! default size (more than the machine has, never allocated), and the
//! file-backed way at a small size.

mod common;

use common::demos;

#[test]
fn memory_limit_refuses_at_once_naming_the_sizes_and_the_file_backed_way() {
    let run = demos(&["memory-limit"]);
    run.assert_ok();
    for label in [
        "MemTotal",
        "MemAvailable",
        "SwapTotal",
        "room for shared memory",
    ] {
        assert!(
            run.fact(label).contains("B"),
            "{label}: {}",
            run.fact(label)
        );
    }
    assert!(
        run.fact("array asked for").starts_with("10000 x "),
        "{}",
        run.fact("array asked for")
    );
    assert!(run.fact("array asked for").ends_with("(1.50x the room)"));
    // The library's error, word for word as the user sees it.
    let error: String = run
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("| "))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(error.starts_with("asked for "), "{error}");
    assert!(error.contains("of shared memory but only"), "{error}");
    assert!(error.contains("is available"), "{error}");
    assert!(
        error.contains("ArrayOptions::new().create_file(path, shape)"),
        "{error}"
    );
    assert!(run.fact("why Linux says no").contains("RAM"));
    assert!(run.fact("where a Mac pages").contains("swap"));
    let verified = run.verified();
    assert!(
        verified.contains("available: OutOfMemory in")
            && verified.ends_with(
                "ms, before any allocation, naming both sizes and the file-backed alternative"
            ),
        "{verified}"
    );
    // Nothing was allocated: the parent is as small as it started.
    let table = run.memory_table("memory after the refused request");
    let (_, role, parent) = &table[0];
    assert_eq!(role, "parent");
    assert!(parent[0] < 256 << 20, "parent RSS {}", parent[0]);
}

#[test]
fn memory_limit_takes_an_explicit_shape() {
    // 100 000 x 10 000 000 doubles: 7.3 TiB, more than any test machine.
    let run = demos(&["memory-limit", "--rows", "100000", "--cols", "10000000"]);
    run.assert_ok();
    assert!(
        run.verified().starts_with("7.3 TiB asked with "),
        "{}",
        run.verified()
    );
}

#[test]
fn memory_limit_fills_a_file_backed_array() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.f64");
    let run = demos(&[
        "memory-limit",
        "--rows",
        "64",
        "--cols",
        "8192",
        "--processes",
        "2",
        "--file",
        path.to_str().unwrap(),
    ]);
    run.assert_ok();
    assert!(
        run.fact("anonymous array").starts_with("fits in the room"),
        "{}",
        run.stdout
    );
    let verified = run.verified();
    assert!(
        verified.starts_with("the file-backed array of 4.0 MiB filled by ")
            && verified.ends_with("workers and every element checked; its pages are file pages"),
        "{verified}"
    );
    // The pages are file pages: all 4 MiB of them, none in shared memory.
    let pages = run.fact("array pages, summed PSS");
    assert!(pages.starts_with("4.0 MiB as file pages"), "{pages}");
    let table = run.memory_table("memory while the workers hold the array");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    // The file holds the array: element (r, c) is its 1-based position.
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 64 * 8192 * 8);
    for (i, chunk) in data.chunks(8).enumerate().step_by(997) {
        assert_eq!(
            f64::from_le_bytes(chunk.try_into().unwrap()),
            (i + 1) as f64
        );
    }
}

#[test]
fn memory_limit_refuses_bad_input_clearly() {
    // A size that fits, without --file: nothing to show, and it says why.
    let run = demos(&["memory-limit", "--rows", "64", "--cols", "8192"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("so there is no error to show") && run.stderr.contains("--file PATH"),
        "{}",
        run.stderr
    );
    // Just above the memory available: refused, as it might be allocated.
    let run = demos(&["memory-limit", "--factor", "1.05"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("too close to ask for safely"),
        "{}",
        run.stderr
    );
    let run = demos(&["memory-limit", "--factor", "0"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--factor must be a positive number"),
        "{}",
        run.stderr
    );
}
