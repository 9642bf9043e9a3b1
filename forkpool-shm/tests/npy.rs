//! `.npy` files: round trips with real numpy in both directions, and every
//! kind of bad file giving a clear error.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_says, io_source, python_numpy};
use forkpool_shm::{ArrayOptions, Atomic, Locked, SharedArray, ShmError};

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
        let a =
            unsafe { ArrayOptions::new().create_npy::<f64, Atomic>(&f64_path, &[3, 4]) }.unwrap();
        for i in 0..12 {
            a.set(i, i as f64 / 2.0);
        }
        a.flush().unwrap();
        // SAFETY: as above.
        let b = unsafe { ArrayOptions::new().create_npy::<i16, Locked>(&i16_path, &[2, 2, 2]) }
            .unwrap();
        b.with_lock(|data| data.copy_from_slice(&[-1, 2, -3, 4, -5, 6, -7, 8]))
            .unwrap();
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
    let a = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&f64_path) }.unwrap();
    let a = a.expect_shape(&[3, 4]).unwrap();
    assert_eq!(a.get_at(&[1, 2]), 100.0);
    assert_eq!(a.get_at(&[2, 3]), 5.5);
    // SAFETY: as above.
    let b = unsafe { ArrayOptions::new().open_npy::<i16, Locked>(&i16_path) }.unwrap();
    assert_eq!(b.with_lock(|data| data[7]).unwrap(), 999);
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
        let a = ArrayOptions::new()
            .open_npy::<i32, Atomic>(&paths[0])
            .unwrap();
        assert_eq!(a.shape(), &[3, 5]);
        assert_eq!(a.to_vec().unwrap(), (0..15).collect::<Vec<i32>>());
        a.set_at(&[2, 4], -14);
        a.flush().unwrap();

        let b = ArrayOptions::new()
            .open_npy::<f32, Atomic>(&paths[1])
            .unwrap();
        assert_eq!(b.shape(), &[2, 3]);
        assert_eq!(b.get(5), 1.0);
        assert_eq!(b.get(1), 0.2);

        let c = ArrayOptions::new()
            .open_npy::<f64, Atomic>(&paths[2])
            .unwrap();
        assert_eq!((c.shape(), c.get(0)), (&[][..], 7.5));

        let d = ArrayOptions::new()
            .open_npy::<u8, Atomic>(&paths[3])
            .unwrap();
        assert_eq!(d.shape(), &[0, 3]);
        assert!(d.is_empty());

        let e = ArrayOptions::new()
            .open_npy::<u8, Atomic>(&paths[4])
            .unwrap();
        assert_eq!(e.get(255), 255);

        let f = ArrayOptions::new()
            .open_npy::<i64, Atomic>(&paths[5])
            .unwrap();
        assert!(f.to_vec().unwrap().iter().all(|&x| x == -3));
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
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&paths[0]) }.unwrap_err();
    assert!(matches!(err, ShmError::DtypeMismatch { .. }), "{err:?}");
    assert_says(
        &err,
        &[
            "holds '<i4'",
            "opened as f64 (<f8)",
            "open it as an array of i32",
        ],
    );

    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&paths[1]) }.unwrap_err();
    assert!(err.to_string().contains("big-endian"), "{err}");

    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&paths[2]) }.unwrap_err();
    assert_says(&err, &["'<c16'", "complex arrays are not supported"]);

    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&paths[3]) }.unwrap_err();
    assert!(err.to_string().contains("structured dtype"), "{err}");
}

#[test]
fn the_wrong_shape_is_a_clear_error() {
    let dir = temp();
    let path = dir.path().join("a.npy");
    // SAFETY: a fresh file used only here.
    drop(unsafe { ArrayOptions::new().create_npy::<u16, Atomic>(&path, &[4, 5]) }.unwrap());
    // SAFETY: as above.
    let a = unsafe { ArrayOptions::new().open_npy::<u16, Atomic>(&path) }.unwrap();
    let err = a.expect_shape(&[5, 4]).unwrap_err();
    assert!(matches!(err, ShmError::ShapeMismatch { .. }));
    assert_says(&err, &["a.npy", "expected [5, 4], found [4, 5]"]);
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
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&paths[0]) }.unwrap_err();
    assert!(matches!(err, ShmError::NpyHeader { .. }), "{err:?}");
    assert_says(&err, &["Fortran", "np.ascontiguousarray"]);
}

/// A valid `.npy` of 3 x 4 f64 written by this crate, as bytes.
fn good_npy(dir: &Path) -> Vec<u8> {
    let path = dir.join("good.npy");
    // SAFETY: a fresh file used only here.
    drop(unsafe { ArrayOptions::new().create_npy::<f64, Atomic>(&path, &[3, 4]) }.unwrap());
    std::fs::read(path).unwrap()
}

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> ShmError {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    // SAFETY: a private file; the error path never maps it for long.
    unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }.unwrap_err()
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
    assert_says(
        &err,
        &["too short", &format!("is {} bytes", good.len() - 8)],
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
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }.unwrap_err();
    assert!(matches!(err, ShmError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere.npy"), "{err}");
    let os = io_source(&err).expect("the io::Error is the source");
    assert_eq!(os.kind(), std::io::ErrorKind::NotFound, "{os:?}");
}

// Regression tests for hostile files (issue 16). Each runs the open in a
// forked child where the old failure was a crash, a hang or a huge
// allocation, so the test fails (instead of the harness dying) on old code.

/// A `.npy` file of format `version` whose length field says `hlen` and
/// whose bytes after the length field are `rest`.
fn npy_with_len(version: u8, hlen: u32, rest: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&hlen.to_le_bytes());
    }
    out.extend_from_slice(rest);
    out
}

/// A `.npy` file of format `version` with header `text` and `data` zero bytes.
fn npy_with(version: u8, text: &str, data: usize) -> Vec<u8> {
    let mut rest = text.as_bytes().to_vec();
    rest.resize(rest.len() + data, 0);
    npy_with_len(version, text.len() as u32, &rest)
}

/// A format 1.0 `.npy` file with header `text`, padded as numpy pads it (the
/// data starts at a multiple of 64), and `data` zero bytes.
fn npy_aligned(text: &str, data: usize) -> Vec<u8> {
    let width = (10 + text.len() + 1).div_ceil(64) * 64 - 10 - 1;
    npy_with(1, &format!("{text:<width$}\n"), data)
}

/// Opens `bytes` as a `.npy` of f64 in a forked child whose address space
/// is limited to what it has now plus 1 GiB; returns the error's text.
fn open_in_limited_child(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();
    let child = common::spawn(|| {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or("no VmSize")?;
        let limit = vm_kib * 1024 + (1 << 30);
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, limit, limit)
            .map_err(|e| e.to_string())?;
        // SAFETY: a private file; the open fails before mapping anything.
        let err = match unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) } {
            Ok(_) => return Err("a hostile file was opened".into()),
            Err(err) => err.to_string(),
        };
        nix::unistd::write(&write, err.as_bytes()).map_err(|e| e.to_string())?;
        Ok(())
    });
    drop(write);
    child.join();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut text).unwrap();
    text
}

#[test]
fn a_72_byte_file_claiming_a_4_gib_header_is_refused_without_allocating_it() {
    let dir = temp();
    let mut rest = b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }".to_vec();
    rest.resize(72 - 12, b' ');
    let bytes = npy_with_len(2, u32::MAX, &rest);
    assert_eq!(bytes.len(), 72);
    let err = open_in_limited_child(dir.path(), "huge-length.npy", &bytes);
    assert_says(&err, &["4294967295 bytes long", "10000"]);
}

#[test]
fn deep_nesting_in_a_224_byte_header_is_parsed_at_once() {
    // The old parser doubled its time per level of nested lists: 20 levels
    // took 3.35 s, 31 about two hours (it now fails the child's deadline).
    let dir = temp();
    let levels = 30;
    let descr = format!("{}3{}", "[".repeat(levels), "]".repeat(levels));
    let text = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (3,)}}");
    let bytes = npy_with(1, &format!("{text:<213}\n"), 24);
    assert_eq!(bytes.len(), 224 + 24);
    let err = open_in_limited_child(dir.path(), "nested-descr.npy", &bytes);
    assert!(err.contains("structured dtype"), "{err}");

    // Nesting that numpy accepts opens: `((((3))),)` is `(3,)`. The dict
    // and the shape's tuple are two levels: 30 more make 32.
    let shape = format!("{}3{},", "(".repeat(levels), ")".repeat(levels));
    let text = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({shape})}}");
    let path = dir.path().join("nested.npy");
    std::fs::write(&path, npy_with(1, &format!("{text:<213}\n"), 24)).unwrap();
    let child = common::spawn(|| {
        // SAFETY: a private file used only here.
        let array = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }
            .map_err(|e| e.to_string())?;
        ensure!(array.shape() == [3], "shape {:?}", array.shape());
        Ok(())
    });
    child.join();
}

#[test]
fn thousands_of_nesting_levels_are_refused_without_overflowing_the_stack() {
    // The old parser recursed per level: `(1, (1, ...))` 5 120 levels deep
    // (15.5 KB) aborted the process with a stack overflow, 1 536 levels on a
    // 2 MiB thread stack (this child runs on a test thread's stack).
    let dir = temp();
    let levels = 1_900;
    let text = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': {}1{}}}\n",
        "(1, ".repeat(levels),
        ")".repeat(levels)
    );
    assert!(text.len() <= 10_000);
    let err = open_in_limited_child(dir.path(), "deep.npy", &npy_with(1, &text, 8));
    assert!(err.contains("nested deeper than 32 levels"), "{err}");
    // The reproducer's shape: 18 656 bytes, a header over numpy's limit.
    let text = format!("{{'shape': {}{}\n", "[".repeat(18_656 - 12 - 12), "]");
    let bytes = npy_with(3, &text, 0);
    assert_eq!(bytes.len(), 18_656);
    let err = open_in_limited_child(dir.path(), "deeper.npy", &bytes);
    assert!(
        err.contains("more than numpy's limit of 10000 characters"),
        "{err}"
    );
}

#[test]
fn a_two_megabyte_number_is_refused_unread_and_kept_out_of_the_message() {
    let dir = temp();
    let text = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},)}}\n",
        "9".repeat(2 << 20)
    );
    let err = open_in_limited_child(dir.path(), "long-number.npy", &npy_with(2, &text, 0));
    assert!(err.len() < 1_000, "the message is {} bytes long", err.len());
    assert!(err.contains("more than numpy's limit"), "{err}");
    // Under the limit, a long number is refused by its length.
    let text = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},)}}\n",
        "9".repeat(9_000)
    );
    let err = open_in_limited_child(dir.path(), "long-number-2.npy", &npy_with(1, &text, 0));
    assert!(
        err.contains("a number longer than 32 characters") && err.len() < 1_000,
        "{err}"
    );
}

#[test]
fn an_empty_shape_whose_byte_size_overflows_is_refused_as_numpy_refuses_it() {
    // (0, 2**32, 2**32) holds no element, but numpy refuses it ("array is
    // too big") and ndarray's views require the product of the non-zero
    // axes to fit isize; the old code accepted it (and a debug build
    // panicked computing the row length).
    let dir = temp();
    let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }";
    let path = dir.path().join("overflow.npy");
    std::fs::write(&path, npy_aligned(text, 0)).unwrap();
    // SAFETY: a private file; the open fails before mapping it.
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }.unwrap_err();
    assert!(matches!(err, ShmError::InvalidShape { .. }), "{err:?}");
    assert!(err.to_string().contains("too big"), "{err}");
    // numpy's exact limit: 2**32 * 268435455 * 8 bytes fits, so it opens.
    let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4294967296, 268435455), }";
    std::fs::write(&path, npy_aligned(text, 0)).unwrap();
    // SAFETY: as above; the array is empty.
    let array = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }.unwrap();
    assert_eq!((array.len(), array.nrows()), (0, 0));
    assert_eq!(array.raw_view().shape(), &[0, 1 << 32, 268_435_455]);
    assert_eq!(array.to_ndarray().unwrap().len(), 0);
}

#[test]
fn dtypes_are_named_as_numpy_names_them_and_synonyms_open() {
    let dir = temp();
    let open = |name: &str, descr: &str| {
        let text = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}");
        let path = dir.path().join(name);
        std::fs::write(&path, npy_aligned(&text, 16)).unwrap();
        // SAFETY: a private file used only here.
        unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }
    };
    for (i, synonym) in ["'<d'", "'float64'", "'d'", "'=f8'", "\"<f8\""]
        .iter()
        .enumerate()
    {
        let array = open(&format!("synonym{i}.npy"), synonym).unwrap();
        assert_eq!(array.shape(), &[2], "{synonym}");
    }
    let cases = [
        (
            "'|O'",
            "holds '|O'",
            "object arrays (Python objects) are not supported; save numeric data",
        ),
        (
            "'|S2'",
            "holds '|S2'",
            "byte-string arrays are not supported",
        ),
        ("'|b1'", "holds '|b1'", "boolean arrays are not supported"),
        ("'>f8'", "holds '>f8'", "big-endian"),
        ("'<i4'", "holds '<i4'", "open it as an array of i32"),
        (
            "'<l'",
            "holds '<i8' (written '<l')",
            "open it as an array of i64",
        ),
        ("True", "holds True", "not a dtype this crate reads"),
        ("None", "holds None", "not a dtype this crate reads"),
    ];
    for (descr, found, hint) in cases {
        let err = open("other.npy", descr).unwrap_err();
        assert!(
            matches!(err, ShmError::DtypeMismatch { .. }),
            "{descr}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(found) && text.contains(hint),
            "{descr}: {text}"
        );
        assert!(!text.contains("structured"), "{descr}: {text}");
    }
    // The header is not counted as data.
    let err = open("short.npy", "'<f8'");
    let path = dir.path().join("short.npy");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&path, &bytes).unwrap();
    drop(err);
    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_npy::<f64, Atomic>(&path) }
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs 144 bytes (128 bytes of header and 16 of data)")
            && err.contains("too short"),
        "{err}"
    );
}

#[test]
fn the_header_written_is_numpys_byte_for_byte() {
    let dir = temp();
    let shapes: [&[usize]; 5] = [&[], &[7], &[3, 4], &[0, 5], &[12_345, 2, 1]];
    let mut paths = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let path = dir.path().join(format!("ours{i}.npy"));
        // SAFETY: a fresh file used only here.
        drop(unsafe { ArrayOptions::new().create_npy::<u8, Atomic>(&path, shape) }.unwrap());
        paths.push(path);
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let out = python_numpy(
        "import sys, io, numpy as np\n\
         from numpy.lib import format as fmt\n\
         for path in sys.argv[1:]:\n\
         \x20   ours = open(path, 'rb').read()\n\
         \x20   a = np.load(path, mmap_mode='r')\n\
         \x20   buf = io.BytesIO()\n\
         \x20   fmt.write_array_header_1_0(buf, fmt.header_data_from_array_1_0(a))\n\
         \x20   theirs = buf.getvalue()\n\
         \x20   assert ours[:len(theirs)] == theirs, (ours[:len(theirs)], theirs)\n\
         print('ok')",
        &refs,
    );
    assert_eq!(out.trim(), "ok");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64, ..proptest::prelude::ProptestConfig::default()
    })]

    /// The openers, fuzzed (bounded): a mutated file is opened or refused,
    /// never a panic, and what opens is exactly as long as the file.
    #[test]
    fn mutated_files_open_consistently_or_are_refused(
        edits in proptest::collection::vec((0usize..140, 0u8..3, proptest::prelude::any::<u8>()), 1..6),
        data in 0usize..200,
    ) {
        let dir = temp();
        let path = dir.path().join("m.npy");
        // SAFETY: a fresh file used only here.
        drop(unsafe { ArrayOptions::new().create_npy::<u16, Atomic>(&path, &[3, 4]) }.unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(128);
        for (at, kind, byte) in edits {
            let at = at.min(bytes.len() - 1);
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => { bytes.remove(at); }
            }
        }
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(&path, &bytes).unwrap();
        // SAFETY: as above; read-only, and nothing changes the file.
        if let Ok(a) = unsafe { ArrayOptions::new().read_only(true).open_npy::<u16, Atomic>(&path) } {
            let header = bytes.len() as u64 - a.size_bytes();
            proptest::prop_assert!(header >= 10 && header.is_multiple_of(2));
            proptest::prop_assert_eq!(a.iter().count(), a.len());
        }
        // SAFETY: as above.
        if let Ok(a) = unsafe { ArrayOptions::new().read_only(true).open_npy::<u8, Atomic>(&path) } {
            proptest::prop_assert_eq!(a.to_vec().unwrap().len(), a.len());
        }
    }
}

#[test]
fn save_npy_writes_a_copy_numpy_loads_and_never_replaces_unasked() {
    let dir = temp();
    let path = dir.path().join("saved.npy");
    // More than the 1 MiB the copy is written in at a time.
    let array = SharedArray::<i64>::new(&[3, 100_000]).unwrap();
    for row in 0..3 {
        let values: Vec<i64> = (0..100_000).map(|c| row as i64 * 1_000_000 + c).collect();
        array.write_row(row, &values);
    }
    array.save_npy(&path).unwrap();
    let out = python_numpy(
        "import sys, numpy as np\n\
         a = np.load(sys.argv[1])\n\
         assert a.dtype == np.int64 and a.shape == (3, 100000), (a.dtype, a.shape)\n\
         assert (a == np.arange(100000) + 1000000 * np.arange(3)[:, None]).all()\n\
         print('ok')",
        &[&path],
    );
    assert_eq!(out.trim(), "ok");
    let before = std::fs::read(&path).unwrap();
    array.fill(0);
    let err = array.save_npy(&path).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    forkpool_shm::ArrayOptions::new()
        .overwrite(true)
        .save_npy(&array, &path)
        .unwrap();
    // SAFETY: a private file nobody changes while it is mapped.
    let saved = unsafe {
        ArrayOptions::new()
            .read_only(true)
            .open_npy::<i64, Atomic>(&path)
    }
    .unwrap();
    assert_eq!(saved.shape(), &[3, 100_000]);
    assert!(saved.iter().all(|x| x == 0));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left");
}
