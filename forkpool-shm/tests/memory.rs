//! Memory: out-of-memory errors, memory reports, one copy shared by many
//! processes (PSS), and memory freed when every process is killed.

mod common;

use std::time::Duration;

use common::{Outcome, big_memory_lock, io_source, spawn, wait_until};
use forkpool_shm::{
    ByteSize, Locked, MemInfo, MemoryReport, MemoryUsage, Pid, SharedArray, ShmError,
    available_memory,
};

const GIB: u64 = 1 << 30;

#[test]
fn an_impossible_size_is_an_out_of_memory_error_naming_sizes_and_the_alternative() {
    let ten_tib = 10usize << 40;
    let err = SharedArray::<u8>::new(&[ten_tib]).unwrap_err();
    let ShmError::OutOfMemory {
        requested,
        available,
        ..
    } = &err
    else {
        panic!("expected OutOfMemory, got {err:?}");
    };
    assert!(requested.as_u64() >= ten_tib as u64);
    assert!(available.as_u64() < requested.as_u64());
    let text = err.to_string();
    assert!(text.contains("asked for 10.0 TiB"), "{text}");
    assert!(
        text.contains(&format!("only {available} is available")),
        "{text}"
    );
    assert!(
        text.contains("MemAvailable") || text.contains("cgroup"),
        "{text}"
    );
    assert!(text.contains("create_file"), "{text}");

    // The same for every anonymous flavour, and a 25.6 GB-class array of f64
    // when it does not fit.
    assert!(matches!(
        SharedArray::<f64, Locked>::new(&[10_000_000, 160_000]),
        Err(ShmError::OutOfMemory { .. })
    ));
    let room = available_memory().unwrap().bytes.as_u64();
    let too_big = (room / 8 + GIB) as usize;
    assert!(matches!(
        SharedArray::<f64>::new(&[too_big]),
        Err(ShmError::OutOfMemory { .. })
    ));
}

#[test]
fn a_report_covers_the_parent_and_its_workers_with_roles() {
    let array = SharedArray::<u8>::new(&[8 << 20]).unwrap(); // 8 MiB
    array.prefault(0..array.nrows()).unwrap();
    let release = SharedArray::<_>::full(&[], 0u8).unwrap();
    let ready = SharedArray::<_>::full(&[], 0u32).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            spawn(|| {
                array
                    .prefault(0..array.nrows())
                    .map_err(|e| e.to_string())?;
                ready.fetch_add(0, 1, std::sync::atomic::Ordering::AcqRel);
                wait_until("the report", || release.get(0) == 1);
                Ok(())
            })
        })
        .collect();
    wait_until("the workers", || ready.get(0) == 2);
    let mut report = MemoryReport::new();
    report.add(Pid::this(), "parent").unwrap();
    for (i, w) in workers.iter().enumerate() {
        report.add(w.pid(), format!("worker {}", i + 1)).unwrap();
    }
    release.set(0, 1);
    workers.into_iter().for_each(common::Child::join);

    let entries = report.entries();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].pid, Pid::this());
    assert_eq!(entries[2].role, "worker 2");
    for e in entries {
        assert!(e.rss >= 8 << 20, "{} maps the array: {e:?}", e.role);
        assert!(e.shared() >= 8 << 20, "{} shares it: {e:?}", e.role);
        assert!(e.pss_shmem >= (8 << 20) / 3 - 4096, "{e:?}");
    }
    let total = report.total();
    assert_eq!(total.rss, entries.iter().map(|e| e.rss).sum::<u64>());
    let table = report.to_string();
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "header, three processes, total:\n{table}");
    for (line, e) in lines[1..4].iter().zip(entries) {
        assert!(
            line.contains(&e.pid.to_string()) && line.contains(&e.role),
            "{table}"
        );
        assert!(line.contains(&ByteSize(e.pss).to_string()), "{table}");
    }
    assert!(lines[4].contains("total"), "{table}");

    // A process that has exited is a clear error.
    let gone = spawn(|| Ok(()));
    let pid = gone.pid();
    gone.join();
    let err = MemoryUsage::of(pid).unwrap_err();
    assert!(matches!(err, ShmError::Proc { .. }), "{err:?}");
    assert!(err.to_string().contains("has exited"), "{err}");
    // The OS's own error (ENOENT from /proc/<pid>), not one made up from
    // its kind.
    let os = io_source(&err).expect("the io::Error is the source");
    assert_eq!(os.raw_os_error(), Some(libc::ENOENT), "{os:?}");
}

#[test]
fn one_gib_shared_by_the_parent_and_two_workers_adds_under_5_percent_to_summed_pss() {
    let _exclusive = big_memory_lock();
    let size = GIB as usize;
    // The parent before the array exists; `new` maps all of it into the
    // parent (it populates the pages), and the workers forked below start
    // with none of it mapped.
    let parent_before = MemoryUsage::of(Pid::this()).unwrap().pss;
    let array = SharedArray::<u8>::new(&[size / 4096, 4096]).unwrap();
    let halves = array.row_blocks(2);
    let ready = SharedArray::<_>::full(&[], 0u32).unwrap();
    let phase = SharedArray::<_>::full(&[], 0u8).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (mine, other) = (halves[w].clone(), halves[1 - w].clone());
            spawn(|| {
                ready.fetch_add(0, 1, std::sync::atomic::Ordering::AcqRel);
                wait_until("the baseline measurement", || phase.get(0) == 1);
                // Every process maps every page: each worker writes its half
                // and reads the other.
                array.prefault(mine.clone()).map_err(|e| e.to_string())?;
                // SAFETY: the two workers write disjoint halves; nobody reads
                // them until both have signalled.
                unsafe { array.rows_mut_unchecked(mine) }.fill(w as u8 + 1);
                array.prefault_read(other).map_err(|e| e.to_string())?;
                ready.fetch_add(0, 1, std::sync::atomic::Ordering::AcqRel);
                wait_until("the second measurement", || phase.get(0) == 2);
                Ok(())
            })
        })
        .collect();
    let processes = || {
        let mut list = vec![(Pid::this(), "parent".to_string())];
        for (i, w) in workers.iter().enumerate() {
            list.push((w.pid(), format!("worker {}", i + 1)));
        }
        list
    };

    wait_until("the workers to start", || ready.get(0) == 2);
    let before = MemoryReport::collect(processes()).unwrap();
    array.prefault(0..array.nrows()).unwrap(); // already mapped: a no-op
    phase.set(0, 1);
    wait_until("the workers to map the array", || ready.get(0) == 4);
    let with = MemoryReport::collect(processes()).unwrap();
    phase.set(0, 2);
    workers.into_iter().for_each(common::Child::join);

    println!(
        "the workers before they map the array (the parent has it):\n{before}\n\
         with the array mapped by all three:\n{with}"
    );
    assert_eq!(
        (array.get(0), array.get(size - 1)),
        (1, 2),
        "both workers' writes are visible"
    );
    for e in with.entries() {
        assert!(
            e.rss >= GIB,
            "{} maps all of it: RSS {}",
            e.role,
            ByteSize(e.rss)
        );
    }
    let parent_now = before.entries().first().expect("the parent").pss;
    let before_array = before.total().pss - parent_now + parent_before;
    let added = with.total().pss as f64 - before_array as f64;
    let ratio = added / GIB as f64;
    println!(
        "summed PSS: {} before, {} with; the 1 GiB array adds {} ({} bytes, {:.4}x its size, \
         {:+.2}%); summed RSS {}",
        ByteSize(before_array),
        ByteSize(with.total().pss),
        ByteSize(added.max(0.0) as u64),
        added as i64,
        ratio,
        (ratio - 1.0) * 100.0,
        ByteSize(with.total().rss),
    );
    assert!(
        ratio < 1.05,
        "one shared copy adds under 5% over its size, got {ratio:.3}x"
    );
    assert!(
        ratio > 0.95,
        "the array is really resident and counted: {ratio:.3}x"
    );
}

#[test]
fn memory_is_freed_when_every_process_holding_it_is_killed_and_nothing_is_in_dev_shm() {
    let _exclusive = big_memory_lock();
    let size = 512usize << 20;
    let dev_shm = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let before = dev_shm();
    let shmem_before = MemInfo::read().unwrap().shmem;
    let ready = SharedArray::<_>::full(&[], 0u8).unwrap();
    // The child makes the array and forks a grandchild that maps it too;
    // then both are killed, the grandchild first (while its pid is surely its).
    let child = spawn(|| {
        let array = SharedArray::<u8>::new(&[size]).map_err(|e| e.to_string())?;
        array.prefault(0..size).map_err(|e| e.to_string())?;
        let _grandchild = common::spawn(|| {
            let _held = array.clone();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        ready.set(0, 1);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    wait_until("the array to exist", || ready.get(0) == 1);
    let alive = MemInfo::read().unwrap().shmem;
    assert!(
        alive >= shmem_before + size as u64 * 9 / 10,
        "the array is resident shared memory: Shmem {} -> {}",
        ByteSize(shmem_before),
        ByteSize(alive)
    );
    assert_eq!(dev_shm(), before, "nothing appears in /dev/shm");
    let grandchildren: Vec<i32> =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.pid()))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
    assert_eq!(grandchildren.len(), 1, "one grandchild");
    nix::sys::signal::kill(Pid::from_raw(grandchildren[0]), nix::sys::signal::SIGKILL).unwrap();
    child.kill();
    assert_eq!(
        child.outcome(),
        Outcome::Signaled(nix::sys::signal::SIGKILL)
    );
    wait_until("the memory to be freed", || {
        MemInfo::read().unwrap().shmem + (size as u64) * 9 / 10 <= alive
    });
    assert_eq!(dev_shm(), before, "nothing is left in /dev/shm");
}
