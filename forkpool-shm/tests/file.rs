//! Raw file-backed arrays (`np.memmap`'s format) across real processes.

mod common;

use common::{python_numpy, spawn};
use forkpool_shm::{LockedArray, MemInfo, PartitionedArray, SharedArray, ShmError};

#[test]
fn a_raw_file_keeps_what_was_written_in_native_row_major_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.i32");
    {
        // SAFETY: a fresh file in a private directory, used only here.
        let array = unsafe { SharedArray::<i32>::create_file(&path, &[2, 3]) }.unwrap();
        assert_eq!(array.path(), Some(path.as_path()));
        assert!(array.to_vec().iter().all(|&x| x == 0), "zero filled");
        array.write_rows(0, &[1, 2, 3, -4, -5, -6]);
        array.flush().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let expected: Vec<u8> = [1i32, 2, 3, -4, -5, -6]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(bytes, expected);
    // SAFETY: as above.
    let again = unsafe { SharedArray::<i32>::open_file(&path, &[2, 3]) }.unwrap();
    assert_eq!(again.get_at(&[1, 2]), -6);
}

#[test]
fn a_file_backed_array_is_shared_with_forked_children() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.f64");
    // SAFETY: a fresh file in a private directory, used only here.
    let array = unsafe { SharedArray::<f64>::create_file(&path, &[8, 128]) }.unwrap();
    let children: Vec<_> = array
        .row_blocks(2)
        .into_iter()
        .map(|rows| {
            spawn(|| {
                array.fill_rows(rows, std::process::id() as f64);
                Ok(())
            })
        })
        .collect();
    let pids: Vec<f64> = children.iter().map(|c| c.pid().as_raw() as f64).collect();
    children.into_iter().for_each(common::Child::join);
    assert_eq!(array.get(0), pids[0]);
    assert_eq!(array.get(array.len() - 1), pids[1]);
}

#[test]
fn a_locked_file_backed_counter_counts_every_increment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.u64");
    // SAFETY: a fresh file in a private directory, used only here.
    let counter = unsafe { LockedArray::<u64>::create_file(&path, &[1]) }.unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            spawn(|| {
                for _ in 0..2500 {
                    let mut guard = counter.lock().map_err(|e| e.to_string())?;
                    let seen = guard[0];
                    guard[0] = seen + 1;
                }
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    counter.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), 10_000u64.to_le_bytes());
}

#[test]
fn opening_with_the_wrong_shape_or_a_short_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.f64");
    std::fs::write(&path, [0u8; 80]).unwrap(); // 10 f64

    // SAFETY: a private file, used only here.
    let err = unsafe { SharedArray::<f64>::open_file(&path, &[3, 4]) }.unwrap_err();
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
    let err = unsafe { SharedArray::<f64>::open_file(&path, &[2, 4]) }.unwrap_err();
    assert!(
        err.to_string()
            .contains("16 bytes more than the shape needs"),
        "{err}"
    );

    // The same bytes as another element type with a matching shape work.
    // SAFETY: as above.
    let as_u32 = unsafe { SharedArray::<u32>::open_file(&path, &[4, 5]) }.unwrap();
    assert_eq!(as_u32.len(), 20);

    let missing = dir.path().join("missing.f64");
    // SAFETY: the file does not exist.
    let err = unsafe { SharedArray::<f64>::open_file(&missing, &[1]) }.unwrap_err();
    assert!(matches!(err, ShmError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.f64"), "{err}");
}

#[test]
fn numpy_memmap_reads_and_writes_a_raw_file_made_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.f32");
    {
        // SAFETY: a fresh file; numpy opens it only after this array is dropped.
        let array = unsafe { PartitionedArray::<f32>::create_file(&path, &[3, 4]) }.unwrap();
        let mut rows = array.claim_rows(0..3).unwrap();
        for (i, x) in rows.iter_mut().enumerate() {
            *x = i as f32 * 0.25;
        }
        drop(rows);
        array.flush().unwrap();
    }
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
    let array = unsafe { SharedArray::<f32>::open_file(&path, &[3, 4]) }.unwrap();
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
    let array = unsafe { SharedArray::<u8>::create_file(&path, &[len]) }.unwrap();
    array.set(0, 1);
    array.set(len - 1, 2);
    array.flush().unwrap();
    drop(array);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
    // SAFETY: as above.
    let array = unsafe { SharedArray::<u8>::open_file(&path, &[len]) }.unwrap();
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
    let err = unsafe { SharedArray::<u8>::create_file(&path, &[len]) }.unwrap_err();
    assert!(matches!(err, ShmError::Reserve { .. }), "{err:?}");
    assert!(err.to_string().contains("1.0 PiB"), "{err}");
    assert!(!path.exists(), "no half-made file is left behind");
}

#[test]
fn empty_raw_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.f64");
    // SAFETY: a fresh file in a private directory, used only here.
    let array = unsafe { SharedArray::<f64>::create_file(&path, &[0, 5]) }.unwrap();
    assert!(array.is_empty());
    assert_eq!(array.to_vec(), Vec::<f64>::new());
    array.flush().unwrap();
    drop(array);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    // SAFETY: as above.
    let again = unsafe { SharedArray::<f64>::open_file(&path, &[0, 5]) }.unwrap();
    assert_eq!(again.shape(), &[0, 5]);
}
