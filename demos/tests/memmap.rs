//! The `memmap` demo, run through the real binary at a small size.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, demos};

const ROWS: u64 = 64;
const COLS: u64 = 32_768;
const ARRAY: u64 = ROWS * COLS * 8; // 16 MiB

fn memmap(file: &Path, extra: &[&str]) -> Run {
    let (rows, cols) = (ROWS.to_string(), COLS.to_string());
    let mut args = vec![
        "memmap",
        "--rows",
        &rows,
        "--cols",
        &cols,
        "--processes",
        "2",
        "--file",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    demos(&args)
}

/// Checks the table: every process maps the file, none holds a private
/// copy, and its pages count once.
fn check_one_copy(run: &Run) {
    let table = run.memory_table("memory while the workers map the file");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker 1", "worker 2", "total"]);
    let (_, _, parent) = &table[0];
    assert!(parent[0] >= ARRAY, "parent RSS {} < {ARRAY}", parent[0]);
    let written: u64 = table[2..4].iter().map(|(_, _, w)| w[0]).sum();
    assert!(written >= ARRAY, "workers' RSS {written} < {ARRAY}");
    // The parent's private memory is its own few MiB (more in a debug build).
    assert!(parent[3] < ARRAY / 2, "parent: private {}", parent[3]);
    for (_, role, usage) in &table[2..4] {
        assert!(usage[3] < ARRAY / 8, "{role}: private {}", usage[3]);
    }
    let ratio = run.times_the_array("file pages, summed PSS");
    assert!((0.95..1.05).contains(&ratio), "{ratio}x the array");
}

/// The element `(row, col)` of a file of native f64s starting at `offset`.
fn element(bytes: &[u8], offset: usize, row: u64, col: u64) -> f64 {
    let at = offset + ((row * COLS + col) * 8) as usize;
    f64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[test]
fn memmap_npy_filled_by_workers_and_read_by_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("array.npy");
    let run = memmap(&path, &[]);
    run.assert_ok();
    assert_eq!(
        run.verified(),
        "2097152 values as written, one copy in memory, numpy agrees"
    );
    check_one_copy(&run);
    // The file stays, as .npy: a header, then the values in C order.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
    let offset = bytes.len() - ARRAY as usize;
    let header = String::from_utf8_lossy(&bytes[..offset]);
    assert!(
        header.contains("'<f8'") && header.contains("(64, 32768)"),
        "{header}"
    );
    assert_eq!(element(&bytes, offset, 0, 0), 1.0);
    assert_eq!(element(&bytes, offset, 63, 32_767), (ROWS * COLS) as f64);
}

#[test]
fn memmap_raw_file_holds_the_bare_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("array.f64");
    let run = memmap(&path, &["--raw", "--no-numpy"]);
    run.assert_ok();
    assert_eq!(
        run.verified(),
        "2097152 values as written, one copy in memory, numpy's check skipped (--no-numpy)"
    );
    check_one_copy(&run);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, ARRAY);
    for (row, col) in [(0, 0), (1, 2), (37, 29_999), (63, 32_767)] {
        assert_eq!(element(&bytes, 0, row, col), (row * COLS + col + 1) as f64);
    }
}

#[test]
fn memmap_removes_its_temporary_file() {
    let run = demos(&[
        "memmap",
        "--rows",
        "16",
        "--cols",
        "512",
        "--processes",
        "2",
    ]);
    run.assert_ok();
    let file = run.fact("file");
    let path = PathBuf::from(file.split(" (").next().unwrap());
    assert!(file.ends_with("(.npy, removed at the end)"), "{file}");
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(!path.parent().unwrap().exists());
}

#[test]
fn memmap_without_python3_fails_saying_what_to_install() {
    // numpy's check is not skipped for want of Python: the demo fails and
    // says what to install (or how to skip the check on purpose).
    let out = Command::new(env!("CARGO_BIN_EXE_demos"))
        .args(["memmap", "--rows", "8", "--cols", "8", "--processes", "1"])
        .env("FORKPOOL_PYTHON", "/no/such/python3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`/no/such/python3` was not found")
            && stderr.contains("apt-get install python3")
            && stderr.contains("--no-numpy"),
        "{stderr}"
    );
}

#[test]
fn memmap_names_a_file_it_cannot_create() {
    let run = demos(&[
        "memmap",
        "--file",
        "/no/such/dir/array.npy",
        "--rows",
        "8",
        "--cols",
        "8",
    ]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("creating the array's file"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("/no/such/dir/array.npy"),
        "{}",
        run.stderr
    );
}

#[test]
fn memmap_refuses_fewer_rows_than_processes_clearly() {
    let run = demos(&["memmap", "--rows", "1", "--processes", "2"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("at least one row per process"),
        "{}",
        run.stderr
    );
}
