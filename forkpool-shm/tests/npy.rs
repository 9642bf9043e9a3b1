//! `.npy` files: round trips with real numpy in both directions, and every
//! kind of bad file giving a clear error.

mod common;

use std::path::{Path, PathBuf};

use common::python_numpy;
use forkpool_shm::{LockedArray, SharedArray, ShmError};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn numpy_opens_with_mmap_what_rust_wrote_and_rust_sees_numpys_writes() {
    let dir = temp();
    let f64_path = dir.path().join("values.npy");
    let i16_path = dir.path().join("small.npy");
    {
        // SAFETY: fresh files; numpy opens them only after these arrays are dropped.
        let a = unsafe { SharedArray::<f64>::create_npy(&f64_path, &[3, 4]) }.unwrap();
        for i in 0..12 {
            a.set(i, i as f64 / 2.0);
        }
        a.flush().unwrap();
        // SAFETY: as above.
        let b = unsafe { LockedArray::<i16>::create_npy(&i16_path, &[2, 2, 2]) }.unwrap();
        b.lock()
            .unwrap()
            .copy_from_slice(&[-1, 2, -3, 4, -5, 6, -7, 8]);
        b.flush().unwrap();
    }
    let out = python_numpy(
        "import sys, numpy as np\n\
         a = np.load(sys.argv[1], mmap_mode='r+')\n\
         assert a.dtype == np.float64 and a.shape == (3, 4), (a.dtype, a.shape)\n\
         assert a.flags['C_CONTIGUOUS']\n\
         assert (a == np.arange(12).reshape(3, 4) / 2.0).all(), a\n\
         a[1, 2] = 100.0\n\
         a.flush()\n\
         b = np.load(sys.argv[2], mmap_mode='r+')\n\
         assert b.dtype == np.int16 and b.shape == (2, 2, 2), (b.dtype, b.shape)\n\
         assert b.tolist() == [[[-1, 2], [-3, 4]], [[-5, 6], [-7, 8]]], b.tolist()\n\
         b[1, 1, 1] = 999\n\
         b.flush()\n\
         print('ok')",
        &[&f64_path, &i16_path],
    );
    assert_eq!(out.trim(), "ok");

    // SAFETY: numpy has exited; only this test uses the files.
    let a = unsafe { SharedArray::<f64>::open_npy(&f64_path) }.unwrap();
    let a = a.expect_shape(&[3, 4]).unwrap();
    assert_eq!(a.get_at(&[1, 2]), 100.0);
    assert_eq!(a.get_at(&[2, 3]), 5.5);
    // SAFETY: as above.
    let b = unsafe { LockedArray::<i16>::open_npy(&i16_path) }.unwrap();
    assert_eq!(b.lock().unwrap()[7], 999);
}

/// Runs numpy to write files; returns their paths.
fn numpy_writes(dir: &Path, script: &str, names: &[&str]) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    python_numpy(&format!("import sys, numpy as np\n{script}"), &refs);
    paths
}

#[test]
fn rust_opens_what_numpy_saved_and_numpy_sees_rusts_writes() {
    let dir = temp();
    let paths = numpy_writes(
        dir.path(),
        "np.save(sys.argv[1], np.arange(15, dtype=np.int32).reshape(3, 5))\n\
         np.save(sys.argv[2], np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))\n\
         np.save(sys.argv[3], np.array(7.5))\n\
         np.save(sys.argv[4], np.zeros((0, 3), dtype=np.uint8))\n\
         np.save(sys.argv[5], np.arange(256, dtype=np.uint8))\n\
         m = np.lib.format.open_memmap(sys.argv[6], mode='w+', dtype=np.int64, shape=(4, 2))\n\
         m[:] = -3\n\
         m.flush()",
        &[
            "i32.npy",
            "f32.npy",
            "scalar.npy",
            "empty.npy",
            "u8.npy",
            "memmap.npy",
        ],
    );
    // SAFETY: numpy has exited; only this test uses the files.
    unsafe {
        let a = SharedArray::<i32>::open_npy(&paths[0]).unwrap();
        assert_eq!(a.shape(), &[3, 5]);
        assert_eq!(a.to_vec(), (0..15).collect::<Vec<i32>>());
        a.set_at(&[2, 4], -14);
        a.flush().unwrap();

        let b = SharedArray::<f32>::open_npy(&paths[1]).unwrap();
        assert_eq!(b.shape(), &[2, 3]);
        assert_eq!(b.get(5), 1.0);
        assert_eq!(b.get(1), 0.2);

        let c = SharedArray::<f64>::open_npy(&paths[2]).unwrap();
        assert_eq!((c.shape(), c.get(0)), (&[][..], 7.5));

        let d = SharedArray::<u8>::open_npy(&paths[3]).unwrap();
        assert_eq!(d.shape(), &[0, 3]);
        assert!(d.is_empty());

        let e = SharedArray::<u8>::open_npy(&paths[4]).unwrap();
        assert_eq!(e.get(255), 255);

        let f = SharedArray::<i64>::open_npy(&paths[5]).unwrap();
        assert!(f.to_vec().iter().all(|&x| x == -3));
    }
    let out = python_numpy(
        "import sys, numpy as np\n\
         a = np.load(sys.argv[1])\n\
         assert a[2, 4] == -14 and a[2, 3] == 13, a\n\
         print('ok')",
        &[&paths[0]],
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn the_wrong_element_type_is_a_clear_error() {
    let dir = temp();
    let paths = numpy_writes(
        dir.path(),
        "np.save(sys.argv[1], np.zeros(4, dtype=np.int32))\n\
         np.save(sys.argv[2], np.zeros(4, dtype='>f8'))\n\
         np.save(sys.argv[3], np.zeros(4, dtype=np.complex128))\n\
         np.save(sys.argv[4], np.zeros(4, dtype=[('x', '<f8'), ('y', '<i4')]))",
        &["i32.npy", "big.npy", "complex.npy", "record.npy"],
    );
    // SAFETY: numpy has exited; the file is never mapped (the open fails).
    let err = unsafe { SharedArray::<f64>::open_npy(&paths[0]) }.unwrap_err();
    assert!(matches!(err, ShmError::DtypeMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("holds '<i4'"), "{text}");
    assert!(text.contains("opened as f64 (<f8)"), "{text}");
    assert!(text.contains("open it as an array of i32"), "{text}");

    // SAFETY: as above.
    let err = unsafe { SharedArray::<f64>::open_npy(&paths[1]) }.unwrap_err();
    assert!(err.to_string().contains("big-endian"), "{err}");

    // SAFETY: as above.
    let err = unsafe { SharedArray::<f64>::open_npy(&paths[2]) }.unwrap_err();
    assert!(err.to_string().contains("'<c16'"), "{err}");
    assert!(
        err.to_string().contains("complex arrays are not supported"),
        "{err}"
    );

    // SAFETY: as above.
    let err = unsafe { SharedArray::<f64>::open_npy(&paths[3]) }.unwrap_err();
    assert!(err.to_string().contains("structured dtype"), "{err}");
}

#[test]
fn the_wrong_shape_is_a_clear_error() {
    let dir = temp();
    let path = dir.path().join("a.npy");
    // SAFETY: a fresh file used only here.
    drop(unsafe { SharedArray::<u16>::create_npy(&path, &[4, 5]) }.unwrap());
    // SAFETY: as above.
    let a = unsafe { SharedArray::<u16>::open_npy(&path) }.unwrap();
    let err = a.expect_shape(&[5, 4]).unwrap_err();
    assert!(matches!(err, ShmError::ShapeMismatch { .. }));
    let text = err.to_string();
    assert!(
        text.contains("a.npy") && text.contains("expected [5, 4], found [4, 5]"),
        "{text}"
    );
}

#[test]
fn fortran_order_is_refused_with_the_fix() {
    let dir = temp();
    let paths = numpy_writes(
        dir.path(),
        "np.save(sys.argv[1], np.asfortranarray(np.zeros((3, 4))))",
        &["fortran.npy"],
    );
    // SAFETY: numpy has exited; the file is never mapped.
    let err = unsafe { SharedArray::<f64>::open_npy(&paths[0]) }.unwrap_err();
    assert!(matches!(err, ShmError::NpyHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("Fortran"), "{err}");
    assert!(err.to_string().contains("np.ascontiguousarray"), "{err}");
}

/// A valid `.npy` of 3 x 4 f64 written by this crate, as bytes.
fn good_npy(dir: &Path) -> Vec<u8> {
    let path = dir.join("good.npy");
    // SAFETY: a fresh file used only here.
    drop(unsafe { SharedArray::<f64>::create_npy(&path, &[3, 4]) }.unwrap());
    std::fs::read(path).unwrap()
}

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> ShmError {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    // SAFETY: a private file; the error path never maps it for long.
    unsafe { SharedArray::<f64>::open_npy(&path) }.unwrap_err()
}

#[test]
fn truncated_and_malformed_files_are_clear_errors_not_panics() {
    let dir = temp();
    let good = good_npy(dir.path());
    let header_len = good.len() - 96;
    assert_eq!(header_len % 64, 0, "the data is 64-byte aligned");

    let err = open_bytes(dir.path(), "empty.npy", &[]);
    assert!(err.to_string().contains("truncated"), "{err}");

    let err = open_bytes(dir.path(), "cut-header.npy", &good[..30]);
    assert!(matches!(err, ShmError::NpyHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("ends inside the header"), "{err}");

    let err = open_bytes(dir.path(), "cut-data.npy", &good[..good.len() - 8]);
    assert!(matches!(err, ShmError::FileLength { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("too short") && text.contains(&format!("is {} bytes", good.len() - 8)),
        "{text}"
    );

    let mut long = good.clone();
    long.extend_from_slice(&[0; 8]);
    let err = open_bytes(dir.path(), "long.npy", &long);
    assert!(err.to_string().contains("8 bytes more"), "{err}");

    let err = open_bytes(dir.path(), "raw.npy", &[0; 128]);
    assert!(err.to_string().contains("magic"), "{err}");

    let mut garbage = good.clone();
    garbage[10..20].copy_from_slice(b"{'descr: <");
    let err = open_bytes(dir.path(), "garbage.npy", &garbage);
    assert!(matches!(err, ShmError::NpyHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("bad header"), "{err}");

    let mut no_shape = good.clone();
    let text = String::from_utf8_lossy(&good[10..header_len]).into_owned();
    let at = 10 + text.find("'shape'").unwrap();
    no_shape[at..at + 7].copy_from_slice(b"'shapf'");
    let err = open_bytes(dir.path(), "no-shape.npy", &no_shape);
    assert!(err.to_string().contains("shapf"), "{err}");

    let mut version = good.clone();
    version[6] = 9;
    let err = open_bytes(dir.path(), "version.npy", &version);
    assert!(err.to_string().contains("version"), "{err}");
}

#[test]
fn a_missing_file_names_its_path() {
    let dir = temp();
    let path = dir.path().join("nowhere.npy");
    // SAFETY: the file does not exist.
    let err = unsafe { SharedArray::<f64>::open_npy(&path) }.unwrap_err();
    assert!(matches!(err, ShmError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere.npy"), "{err}");
}
