//! Raw file-backed arrays (`np.memmap`'s format) across real processes.

mod common;

use common::{chain, io_source, python_numpy, spawn};
use forkpool_shm::{
    ArrayOptions, Atomic, Element, Locked, MemInfo, Mode, Partitioned, SharedArray, ShmError,
};

/// A new file `name` (raw, or `.npy` if `npy`) in a fresh directory,
/// mapped as an array of `shape`.
fn fresh<T: Element, M: Mode>(
    name: &str,
    shape: &[usize],
    npy: bool,
) -> (tempfile::TempDir, std::path::PathBuf, SharedArray<T, M>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let options = ArrayOptions::new();
    // SAFETY: a fresh file in a private directory, used only by the test.
    let array = unsafe {
        if npy {
            options.create_npy(&path, shape)
        } else {
            options.create_file(&path, shape)
        }
    };
    (dir, path, array.unwrap())
}

#[test]
fn a_raw_file_keeps_what_was_written_in_native_row_major_order() {
    let (_dir, path, array) = fresh::<i32, Atomic>("a.i32", &[2, 3], false);
    assert_eq!(array.path(), Some(path.as_path()));
    assert!(
        array.to_vec().unwrap().iter().all(|&x| x == 0),
        "zero filled"
    );
    array.write_rows(0, &[1, 2, 3, -4, -5, -6]);
    array.flush().unwrap();
    drop(array);
    let bytes = std::fs::read(&path).unwrap();
    let expected: Vec<u8> = [1i32, 2, 3, -4, -5, -6]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(bytes, expected);
    // SAFETY: a fresh file in a private directory, used only here.
    let again = unsafe { ArrayOptions::new().open_file::<i32, Atomic>(&path, &[2, 3]) }.unwrap();
    assert_eq!(again.get_at(&[1, 2]), -6);
}

#[test]
fn a_file_backed_array_is_shared_with_forked_children() {
    let (_dir, _path, array) = fresh::<f64, Atomic>("shared.f64", &[8, 128], false);
    common::two_children_fill_halves_with_their_pids(&array);
}

#[test]
fn a_locked_file_backed_counter_counts_every_increment() {
    let (_dir, path, counter) = fresh::<u64, Locked>("counter.u64", &[1], false);
    common::in_children(4, || {
        for _ in 0..2500 {
            counter
                .with_lock(|count| {
                    let seen = count[0];
                    count[0] = seen + 1;
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    counter.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), 10_000u64.to_le_bytes());
}

#[test]
fn opening_with_the_wrong_shape_or_a_short_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.f64");
    std::fs::write(&path, [0u8; 80]).unwrap(); // 10 f64

    // SAFETY: a private file, used only here.
    let err = unsafe { ArrayOptions::new().open_file::<f64, Atomic>(&path, &[3, 4]) }.unwrap_err();
    match &err {
        ShmError::FileLength {
            expected, actual, ..
        } => assert_eq!((*expected, *actual), (96, 80)),
        other => panic!("expected FileLength, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("is 80 bytes") && text.contains("needs 96 bytes"),
        "{text}"
    );
    assert!(text.contains("too short"), "{text}");

    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_file::<f64, Atomic>(&path, &[2, 4]) }.unwrap_err();
    assert!(
        err.to_string()
            .contains("16 bytes more than the shape needs"),
        "{err}"
    );

    // The same bytes as another element type with a matching shape work.
    // SAFETY: as above.
    let as_u32 = unsafe { ArrayOptions::new().open_file::<u32, Atomic>(&path, &[4, 5]) }.unwrap();
    assert_eq!(as_u32.len(), 20);

    let missing = dir.path().join("missing.f64");
    // SAFETY: the file does not exist.
    let err = unsafe { ArrayOptions::new().open_file::<f64, Atomic>(&missing, &[1]) }.unwrap_err();
    assert!(matches!(err, ShmError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.f64"), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // The OS's own error is the source, not a copy in the message.
    let os = io_source(&err).expect("the io::Error is the source");
    assert_eq!(os.raw_os_error(), Some(libc::ENOENT), "{os:?}");
    assert!(!err.to_string().contains("os error"), "{err}");
}

#[test]
fn numpy_memmap_reads_and_writes_a_raw_file_made_here() {
    let (_dir, path, array) = fresh::<f32, Partitioned>("grid.f32", &[3, 4], false);
    array
        .with_rows_mut(0..3, |rows| {
            for (i, x) in rows.iter_mut().enumerate() {
                *x = i as f32 * 0.25;
            }
        })
        .unwrap();
    array.flush().unwrap();
    drop(array); // numpy opens the file only after this array is dropped
    let out = python_numpy(
        "import sys, numpy as np\n\
         a = np.memmap(sys.argv[1], dtype=np.float32, mode='r+', shape=(3, 4))\n\
         assert (a == np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25).all(), a\n\
         a[2, 3] = -1.0\n\
         a.flush()\n\
         print('ok')",
        &[&path],
    );
    assert_eq!(out.trim(), "ok");
    // SAFETY: numpy has exited.
    let array = unsafe { ArrayOptions::new().open_file::<f32, Atomic>(&path, &[3, 4]) }.unwrap();
    assert_eq!(array.get_at(&[2, 3]), -1.0);
    assert_eq!(array.get_at(&[2, 2]), 2.5);
}

#[test]
fn a_file_array_may_be_larger_than_memory() {
    let info = MemInfo::read().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("huge.u8");
    let len = (info.mem_total + (1 << 30)) as usize; // more than all the RAM
    let free = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    let free = free.blocks_available() * free.fragment_size();
    assert!(
        free > len as u64 + (1 << 30),
        "this test needs {} GiB of free disk under {} (has {} GiB)",
        len >> 30,
        dir.path().display(),
        free >> 30
    );
    // An anonymous array this large is refused...
    assert!(matches!(
        SharedArray::<u8>::new(&[len]),
        Err(ShmError::OutOfMemory { .. })
    ));
    // ...a file-backed one is not: pages go to disk.
    // SAFETY: a fresh file in a private directory, used only here.
    let array = unsafe { ArrayOptions::new().create_file::<u8, Atomic>(&path, &[len]) }.unwrap();
    array.set(0, 1);
    array.set(len - 1, 2);
    array.flush().unwrap();
    drop(array);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
    // SAFETY: as above.
    let array = unsafe { ArrayOptions::new().open_file::<u8, Atomic>(&path, &[len]) }.unwrap();
    assert_eq!(
        (array.get(0), array.get(len / 2), array.get(len - 1)),
        (1, 0, 2)
    );
}

#[test]
fn a_file_larger_than_the_disk_is_refused_and_removed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("impossible.u8");
    let len = 1usize << 50; // 1 PiB
    // SAFETY: the file is new and never successfully mapped.
    let err = unsafe { ArrayOptions::new().create_file::<u8, Atomic>(&path, &[len]) }.unwrap_err();
    assert!(matches!(err, ShmError::Reserve { .. }), "{err:?}");
    assert!(err.to_string().contains("1.0 PiB"), "{err}");
    assert!(!path.exists(), "no half-made file is left behind");
    assert!(entries(dir.path()).is_empty(), "no temporary file either");
}

#[test]
fn empty_raw_files_work() {
    let (_dir, path, array) = fresh::<f64, Atomic>("empty.f64", &[0, 5], false);
    assert!(array.is_empty());
    assert_eq!(array.to_vec().unwrap(), Vec::<f64>::new());
    array.flush().unwrap();
    drop(array);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    // SAFETY: as above.
    let again = unsafe { ArrayOptions::new().open_file::<f64, Atomic>(&path, &[0, 5]) }.unwrap();
    assert_eq!(again.shape(), &[0, 5]);
}

// Creating never destroys what it did not make (issue 16): the old
// `create_*` truncated whatever was at the path and, on a later error,
// removed it (a FIFO, a user's file, a symlink after truncating its target).

/// What is in `dir`, sorted: no temporary file may be left behind.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn create_on_a_fifo_leaves_the_fifo_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipe");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for raw in [true, false] {
        // SAFETY: the create fails; nothing is mapped.
        let err = unsafe {
            if raw {
                ArrayOptions::new()
                    .create_file::<f64, Atomic>(&path, &[4])
                    .map(drop)
            } else {
                ArrayOptions::new()
                    .create_npy::<f64, Atomic>(&path, &[4])
                    .map(drop)
            }
        }
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("FIFO"), "{text}");
        assert!(!text.contains("not enough free memory"), "{text}");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()),
            "the FIFO is still there"
        );
    }
    assert_eq!(entries(dir.path()), ["pipe"]);
}

#[test]
fn create_on_an_existing_file_keeps_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.f64");
    std::fs::write(&path, b"the user's data").unwrap();
    // SAFETY: the create fails; nothing is mapped.
    let err = unsafe { ArrayOptions::new().create_file::<f64, Atomic>(&path, &[4]) }.unwrap_err();
    match &err {
        ShmError::Refused { kind, .. } => {
            assert_eq!(*kind, std::io::ErrorKind::AlreadyExists, "{err}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // A refusal of ours is no OS error: nothing poses as one.
    assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    assert!(
        err.to_string().contains("already exists (15 bytes)"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the user's data");
    assert_eq!(entries(dir.path()), ["precious.f64"]);
}

#[test]
fn create_through_a_symlink_keeps_the_link_and_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let (target, link) = (dir.path().join("target"), dir.path().join("link.npy"));
    std::fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // SAFETY: the create fails; nothing is mapped.
    let err = unsafe { ArrayOptions::new().create_npy::<u8, Atomic>(&link, &[100]) }.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(link.is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn a_second_create_npy_of_one_path_keeps_the_first_arrays_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npy");
    // SAFETY: a fresh file used only by this test.
    let first = unsafe { ArrayOptions::new().create_npy::<i64, Atomic>(&path, &[4, 4]) }.unwrap();
    first.fill(7);
    first.flush().unwrap();
    // Smaller, larger and equal shapes: the old code zeroed (or cut) the
    // first array's file under it.
    for shape in [&[1][..], &[100, 100], &[4, 4]] {
        // SAFETY: the create fails; nothing new is mapped.
        let err =
            unsafe { ArrayOptions::new().create_npy::<i64, Atomic>(&path, shape) }.unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
    assert!(first.iter().all(|x| x == 7));
    drop(first);
    // SAFETY: as above.
    let again = unsafe { ArrayOptions::new().open_npy::<i64, Atomic>(&path) }.unwrap();
    assert_eq!(again.shape(), &[4, 4]);
    assert!(again.iter().all(|x| x == 7));
}

#[test]
fn a_read_only_file_is_not_opened_read_write_even_by_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.npy");
    // SAFETY: a fresh file used only by this test.
    let array = unsafe { ArrayOptions::new().create_npy::<u16, Atomic>(&path, &[3]) }.unwrap();
    array.set(1, 9);
    drop(array);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&path).unwrap();
    // SAFETY: the open fails; nothing is mapped.
    let err = unsafe { ArrayOptions::new().open_npy::<u16, Atomic>(&path) }.unwrap_err();
    assert!(err.to_string().contains("read-only (mode 444)"), "{err}");
    // SAFETY: as above.
    let err = unsafe { ArrayOptions::new().open_file::<u16, Atomic>(&path, &[64]) }.unwrap_err();
    assert!(err.to_string().contains("read_only(true)"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_read_only_open_maps_the_file_prot_read_and_refuses_writes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.npy");
    // SAFETY: a fresh file used only by this test.
    let array = unsafe { ArrayOptions::new().create_npy::<u16, Atomic>(&path, &[3, 2]) }.unwrap();
    array.set(1, 9);
    drop(array);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    // ANCHOR: readonly
    // SAFETY: nothing writes or truncates the file while it is mapped.
    let array = unsafe {
        ArrayOptions::new()
            .read_only(true)
            .open_npy::<u16, Atomic>(&path)
    }
    .unwrap();
    assert!(array.is_read_only());
    // ANCHOR_END: readonly
    assert_eq!(array.to_vec().unwrap(), [0, 9, 0, 0, 0, 0]);
    array.prefault_read(0..3).unwrap();
    assert!(matches!(
        array.prefault(0..3),
        Err(ShmError::ReadOnly { .. })
    ));
    let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| array.set(0, 1)));
    let message = *set.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("mapped read-only"), "{message}");
    let fill = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| array.fill_rows(0..1, 1)));
    assert!(fill.is_err());
    // The kernel's view: the file is mapped shared and not writable.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(path.to_str().unwrap()))
        .expect("the file is mapped");
    assert!(line.split_whitespace().nth(1) == Some("r--s"), "{line}");
    // A forked child reads it too.
    let child = spawn(|| {
        ensure!(array.get(1) == 9, "child read {}", array.get(1));
        Ok(())
    });
    child.join();
    // SAFETY: as above.
    let raw = unsafe {
        ArrayOptions::new()
            .read_only(true)
            .open_file::<u8, Atomic>(&path, &[128 + 12])
    }
    .unwrap();
    assert!(raw.is_read_only() && raw.get(0) == 0x93);
}

#[test]
fn overwrite_replaces_a_file_atomically_and_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.npy");
    // SAFETY: a fresh file used only by this test.
    let old = unsafe { ArrayOptions::new().create_npy::<f32, Atomic>(&path, &[8]) }.unwrap();
    old.fill(1.5);
    old.flush().unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    // ANCHOR: overwrite
    let options = ArrayOptions::new().overwrite(true);
    // SAFETY: as above; `old` maps the old file, which the rename unlinks.
    let new: SharedArray<f32> = unsafe { options.create_npy(&path, &[2, 2]) }.unwrap();
    // ANCHOR_END: overwrite
    assert!(new.iter().all(|x| x == 0.0));
    // The old mapping keeps the old file's data; the path is the new file.
    assert!(old.iter().all(|x| x == 1.5));
    new.set(3, 2.5);
    new.flush().unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // SAFETY: as above.
    let again = unsafe { ArrayOptions::new().open_npy::<f32, Atomic>(&path) }.unwrap();
    assert_eq!((again.shape(), again.get(3)), (&[2, 2][..], 2.5));
    assert_eq!(entries(dir.path()), ["data.npy"]);

    // A FIFO is never replaced, even when asked to overwrite.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // SAFETY: the create fails.
    let err = unsafe { options.create_file::<u8, Atomic>(&fifo, &[1]) }.unwrap_err();
    assert!(err.to_string().contains("FIFO"), "{err}");
}

#[test]
fn following_a_symlink_replaces_its_target_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let (target, link) = (dir.path().join("target.u8"), dir.path().join("link.u8"));
    std::fs::write(&target, b"old").unwrap();
    std::os::unix::fs::symlink("target.u8", &link).unwrap();
    let options = ArrayOptions::new().overwrite(true);
    // Overwrite alone does not write through the link.
    // SAFETY: the create fails.
    let err = unsafe { options.create_file::<u8, Atomic>(&link, &[4]) }.unwrap_err();
    assert!(err.to_string().contains("follow_symlinks"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    // SAFETY: a file used only by this test.
    let array: SharedArray<u8> =
        unsafe { options.follow_symlinks(true).create_file(&link, &[4]) }.unwrap();
    array.fill(3);
    array.flush().unwrap();
    assert!(link.is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), [3; 4]);
    assert_eq!(array.path(), Some(target.as_path()));
}

/// A create that fails for another reason than space says so: the old
/// message blamed "not enough free memory or disk space" for any error.
#[test]
fn a_create_over_the_file_size_limit_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.f64");
    let child = spawn(|| {
        use nix::sys::resource::{Resource, setrlimit};
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: ignoring a signal installs no handler code.
        unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.map_err(|e| e.to_string())?;
        setrlimit(Resource::RLIMIT_FSIZE, 1 << 20, 1 << 20).map_err(|e| e.to_string())?;
        // SAFETY: the create fails; nothing is mapped.
        let err = match unsafe { ArrayOptions::new().create_file::<f64, Atomic>(&path, &[1 << 20]) }
        {
            Ok(_) => return Err("a file over RLIMIT_FSIZE was created".into()),
            Err(err) => chain(&err),
        };
        ensure!(err.contains("File too large"), "{err}");
        ensure!(!err.contains("not enough free memory"), "{err}");
        Ok(())
    });
    child.join();
    assert!(entries(dir.path()).is_empty(), "nothing is left behind");
}
