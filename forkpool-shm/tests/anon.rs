//! Anonymous lock-free arrays (`SharedArray`) across real forked processes.

mod common;

use std::sync::atomic::Ordering;

use common::{Outcome, in_children_times, join_all, spawn, spawn_each, wait_until};
use forkpool_shm::{Element, SharedArray, ShmError};

#[test]
fn a_childs_writes_are_seen_by_the_parent_and_by_a_sibling() {
    let array = SharedArray::<f64>::new(&[4, 1000]).unwrap();
    let step = SharedArray::<_>::full(&[], 0u32).unwrap();

    // The first child writes row 0, then waits for its sibling's row 1.
    let first = spawn(|| {
        array.fill_row(0, 1.5);
        step.store(0, 1, Ordering::Release);
        wait_until("the sibling's row", || step.load(0, Ordering::Acquire) == 2);
        let row1 = array.row_to_vec(1);
        ensure!(
            row1.iter().all(|&x| x == 2.5),
            "sibling's row 1 not seen: {:?}",
            &row1[..4]
        );
        Ok(())
    });
    // The second child sees row 0, then writes row 1.
    let second = spawn(|| {
        wait_until("the first child's row", || {
            step.load(0, Ordering::Acquire) == 1
        });
        let row0 = array.row_to_vec(0);
        ensure!(
            row0.iter().all(|&x| x == 1.5),
            "sibling's row 0 not seen: {:?}",
            &row0[..4]
        );
        array.fill_row(1, 2.5);
        step.store(0, 2, Ordering::Release);
        Ok(())
    });
    first.join();
    second.join();

    let all = array.to_vec().unwrap();
    assert!(all[..1000].iter().all(|&x| x == 1.5));
    assert!(all[1000..2000].iter().all(|&x| x == 2.5));
    assert!(all[2000..].iter().all(|&x| x == 0.0), "rows 2..4 stay zero");
}

#[test]
fn the_parents_writes_after_fork_are_seen_by_the_child() {
    let array = SharedArray::<u32>::new(&[1024]).unwrap();
    let go = SharedArray::<_>::full(&[], 0u8).unwrap();
    let child = spawn(|| {
        wait_until("the parent's write", || go.get(0) == 1);
        ensure!(array.get(1023) == 77, "child sees {}", array.get(1023));
        Ok(())
    });
    array.set(1023, 77);
    go.set(0, 1);
    child.join();
}

#[test]
fn two_workers_fill_disjoint_halves_with_atomics() {
    let array = SharedArray::<f64>::new(&[64, 4096]).unwrap();
    common::two_children_fill_halves_with_their_pids(&array);
}

#[test]
fn two_workers_fill_disjoint_halves_through_the_unsafe_slice_path() {
    let array = SharedArray::<u64>::new(&[32, 1000]).unwrap();
    join_all(spawn_each(array.row_blocks(2), |rows| {
        let first = rows.start * 1000;
        // SAFETY: each child gets a disjoint range of rows, and the parent
        // reads nothing until both have exited.
        let block = unsafe { array.rows_mut_unchecked(rows) };
        for (i, x) in block.iter_mut().enumerate() {
            *x = (first + i) as u64;
        }
        Ok(())
    }));
    let expected: Vec<u64> = (0..32_000).collect();
    assert_eq!(array.to_vec().unwrap(), expected);
}

#[test]
fn eight_processes_add_atomically_without_a_lock() {
    let array = SharedArray::<u64>::new(&[3]).unwrap();
    in_children_times(8, 10_000, || {
        array.fetch_add(1, 1, Ordering::Relaxed);
        Ok::<_, String>(())
    });
    assert_eq!(array.to_vec().unwrap(), [0, 80_000, 0]);
}

#[test]
fn only_one_process_wins_a_compare_exchange_race() {
    let winner = SharedArray::<_>::full(&[], 0i32).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            spawn(|| {
                let me = std::process::id() as i32;
                let won = winner
                    .compare_exchange(0, 0, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                // Exit code 0 for the winner, 3 for the others.
                if won { Ok(()) } else { Err("lost".into()) }
            })
        })
        .collect();
    let pids: Vec<i32> = children.iter().map(|c| c.pid().as_raw()).collect();
    let outcomes: Vec<Outcome> = children.into_iter().map(common::Child::outcome).collect();
    let winners: Vec<i32> = pids
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Exited(0, _)))
        .map(|(&p, _)| p)
        .collect();
    assert_eq!(
        winners,
        [winner.get(0)],
        "exactly one winner, the one recorded: {outcomes:?}"
    );
}

fn round_trip<T: Element>(values: [T; 3]) {
    let array = SharedArray::<T>::new(&[2, 3]).unwrap();
    assert!(
        array.to_vec().unwrap().iter().all(|&x| x == T::default()),
        "{} zero filled",
        T::NAME
    );
    assert_eq!(array.as_ptr() as usize % 4096, 0, "page-aligned data");
    let child = spawn(|| {
        array.write_row(1, &values);
        Ok(())
    });
    child.join();
    assert_eq!(array.row_to_vec(1), values, "{}", T::NAME);
    assert_eq!(array.row_to_vec(0), [T::default(); 3], "{}", T::NAME);
}

#[test]
fn every_element_type_round_trips_through_a_child() {
    round_trip::<u8>([1, 2, u8::MAX]);
    round_trip::<u16>([1, 2, u16::MAX]);
    round_trip::<u32>([1, 2, u32::MAX]);
    round_trip::<u64>([1, 2, u64::MAX]);
    round_trip::<i8>([-1, 2, i8::MIN]);
    round_trip::<i16>([-1, 2, i16::MIN]);
    round_trip::<i32>([-1, 2, i32::MIN]);
    round_trip::<i64>([-1, 2, i64::MIN]);
    round_trip::<f32>([-1.5, f32::MAX, f32::MIN_POSITIVE]);
    round_trip::<f64>([-1.5, f64::MAX, f64::MIN_POSITIVE]);
}

#[test]
fn shapes_of_every_rank_and_empty_arrays() {
    let scalar = SharedArray::<f64>::new(&[]).unwrap();
    assert_eq!((scalar.len(), scalar.nrows(), scalar.row_len()), (1, 1, 1));
    scalar.set(0, 3.0);
    assert_eq!(scalar.to_ndarray().unwrap().ndim(), 0);

    let cube = SharedArray::<i16>::new(&[3, 4, 5]).unwrap();
    assert_eq!((cube.len(), cube.nrows(), cube.row_len()), (60, 3, 20));
    cube.set_at(&[2, 3, 4], 9);
    assert_eq!(cube.get(59), 9);
    assert_eq!(cube.to_ndarray().unwrap()[[2, 3, 4]], 9);
    assert_eq!(cube.raw_view().shape(), &[3, 4, 5]);

    let empty = SharedArray::<u8>::new(&[0, 7]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.to_vec().unwrap(), Vec::<u8>::new());
    empty.fill(1);
    empty.prefault(0..0).unwrap();
}

#[test]
fn clones_are_cheap_handles_to_the_same_memory() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<SharedArray<f64>>();

    let a = SharedArray::<i32>::new(&[100]).unwrap();
    let b = a.clone();
    assert_eq!(a.as_ptr(), b.as_ptr(), "a clone maps nothing new");
    std::thread::scope(|s| {
        s.spawn(|| b.set(5, -5));
    });
    assert_eq!(a.get(5), -5);
    drop(a);
    assert_eq!(b.get(5), -5, "the memory lives while a handle does");
}

#[test]
fn a_static_handle_set_before_fork_reaches_workers_running_fn_pointers() {
    static ARRAY: std::sync::OnceLock<SharedArray<f64>> = std::sync::OnceLock::new();
    fn populate((offset, blocksize): (usize, usize)) {
        let array = ARRAY.get().expect("set before fork");
        for row in offset..offset + blocksize {
            array.fill_row(row, row as f64);
        }
    }
    let array = ARRAY.get_or_init(|| SharedArray::new(&[100, 64]).unwrap());
    let task: fn((usize, usize)) = populate;
    let children: Vec<_> = [(0, 50), (50, 50)]
        .into_iter()
        .map(|block| {
            spawn(move || {
                task(block);
                Ok(())
            })
        })
        .collect();
    children.into_iter().for_each(common::Child::join);
    for row in 0..100 {
        assert_eq!(array.row_to_vec(row), vec![row as f64; 64]);
    }
}

/// Pages of rows `rows` of a one-page-per-row array present in this
/// process's page tables (bit 63 of `/proc/self/pagemap`).
fn mapped_rows(array: &SharedArray<u8>, rows: std::ops::Range<usize>) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let first = array.as_ptr() as u64 / 4096 + rows.start as u64;
    pagemap.seek(SeekFrom::Start(first * 8)).unwrap();
    let mut entries = vec![0u8; rows.len() * 8];
    pagemap.read_exact(&mut entries).unwrap();
    entries
        .chunks_exact(8)
        .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) >> 63 == 1)
        .count()
}

#[test]
fn creation_maps_every_page_in_the_creator_and_none_in_a_forked_child() {
    let array = SharedArray::<u8>::new(&[64, 4096]).unwrap(); // one page per row
    assert_eq!(mapped_rows(&array, 0..64), 64, "populated by `new`");
    spawn(move || {
        // Shared mappings' page tables are not copied by fork.
        match mapped_rows(&array, 0..64) {
            0 => Ok(()),
            n => Err(format!("{n} pages mapped in a fresh child")),
        }
    })
    .join();
}

#[test]
fn prefault_maps_the_rows_pages_into_this_process() {
    let array = SharedArray::<u8>::new(&[64, 4096]).unwrap(); // one page per row
    // A forked child has none of the array's pages mapped (the creator
    // has all of them: `new` populates).
    spawn(move || {
        let check = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(format!("{what}: {got} pages mapped, expected {want}"))
            }
        };
        check("fresh child", mapped_rows(&array, 0..64), 0)?;
        array.prefault(8..24).map_err(|e| e.to_string())?;
        check("rows 8..24", mapped_rows(&array, 8..24), 16)?;
        // The pages are mapped by read faults, which also map neighbours
        // already in memory (the kernel's fault-around: the aligned 64 KiB,
        // 16 pages, around each fault), so at most rows 0..40 here.
        let after = mapped_rows(&array, 0..64);
        if !(16..=32).contains(&after) || mapped_rows(&array, 40..64) != 0 {
            return Err(format!("after prefault(8..24): {after} pages mapped"));
        }
        // Mapped writable: writing them takes no fault.
        let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_err(|e| e.to_string())?
            .minor_page_faults();
        array.fill_rows(8..24, 0);
        let faults = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_err(|e| e.to_string())?
            .minor_page_faults()
            - before;
        if faults > 2 {
            return Err(format!("writing 16 prefaulted pages took {faults} faults"));
        }
        array.prefault_read(40..41).map_err(|e| e.to_string())?;
        check("row 40", mapped_rows(&array, 40..41), 1)?;
        // A read fault also maps neighbours already in memory (the kernel's
        // fault-around, 64 KiB), never more.
        let after = mapped_rows(&array, 0..64);
        if !(17..=48).contains(&after) {
            return Err(format!("after prefault_read(40..41): {after} pages mapped"));
        }
        if array.to_vec().unwrap().iter().all(|&x| x == 0) {
            Ok(())
        } else {
            Err("prefaulting changed data".into())
        }
    })
    .join();
}

#[test]
#[should_panic(expected = "out of bounds")]
fn an_index_past_the_end_panics() {
    let array = SharedArray::<u8>::new(&[4]).unwrap();
    array.get(4);
}

#[test]
#[should_panic(expected = "a row has 3 elements, got 2")]
fn a_row_of_the_wrong_length_panics() {
    let array = SharedArray::<u8>::new(&[2, 3]).unwrap();
    array.write_row(0, &[1, 2]);
}

#[test]
fn impossible_shapes_are_errors() {
    let err = SharedArray::<f64>::new(&[usize::MAX, 2]).unwrap_err();
    assert!(matches!(err, ShmError::InvalidShape { .. }), "{err}");
    let err = SharedArray::<u8>::new(&[1; 40]).unwrap_err();
    assert!(err.to_string().contains("40 dimensions"), "{err}");
}

#[test]
fn expect_shape_names_both_shapes() {
    let array = SharedArray::<u8>::new(&[2, 3]).unwrap();
    let err = array.expect_shape(&[3, 2]).unwrap_err();
    assert!(matches!(err, ShmError::ShapeMismatch { .. }));
    assert_eq!(
        err.to_string(),
        "anonymous array: shape mismatch: expected [3, 2], found [2, 3]"
    );
}
