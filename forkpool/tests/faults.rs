//! Fault paths: panics, killed workers, `abort`, `exit`, out of memory,
//! failing initializers, values that will not encode or decode, and
//! garbage on a worker's result pipe. After each, the pool keeps working
//! (or says clearly why it cannot), and nothing hangs.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Procs, TestPool, within};
use forkpool::{Error, ExitCause, Pid, Pool};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn double(x: u64) -> u64 {
    x * 2
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn panic_on_3(x: u64) -> u64 {
    if x == 3 {
        panic!("boom on {x}");
    }
    x
}

const SIGKILL: i32 = libc::SIGKILL;
const SIGABRT: i32 = libc::SIGABRT;

#[test]
fn a_panic_is_that_items_error_and_the_worker_goes_on() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let before: HashSet<Pid> = pool.worker_pids().into_iter().collect();
    let err = pool.map_chunked(panic_on_3, 0..10, 1).unwrap_err();
    match &err {
        Error::Panicked { item, pid, message } => {
            assert_eq!(*item, 3);
            assert!(before.contains(pid), "{pid} is not a worker");
            assert!(message.contains("boom on 3"), "{message}");
            assert!(
                message.contains("tests/faults.rs"),
                "no location: {message}"
            );
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(err.to_string().contains("item 3"), "{err}");
    // Same workers, still serving.
    let after: HashSet<Pid> = pool.worker_pids().into_iter().collect();
    assert_eq!(before, after);
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn a_panic_in_a_chunk_fails_only_that_item() {
    let pool = TestPool::new(2);
    let results: Vec<_> = pool.imap(panic_on_3, 0..8, 8).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(Error::Panicked { item: 3, .. })), "{r:?}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

#[test]
fn sigkill_mid_map_fails_the_held_tasks_and_the_pool_goes_on() {
    let pool = TestPool::new(2);
    let mut procs = Procs::of(&pool);
    let victim = pool.worker_pids()[0];
    // imap is lazy: the tasks start when iteration does.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        common::kill(victim, SIGKILL);
    });
    let results: Vec<_> = pool.imap(sleep_ms, [400u64; 6], 1).collect();
    killer.join().unwrap();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failed.is_empty(), "no task failed: {results:?}");
    for e in &failed {
        match e {
            Error::WorkerDied { pid, cause, .. } => {
                assert_eq!(*pid, victim);
                assert_eq!(
                    *cause,
                    ExitCause::Signaled {
                        signal: SIGKILL,
                        core_dumped: false
                    }
                );
                assert!(e.to_string().contains("SIGKILL"), "{e}");
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
    }
    // Only what the killed worker held failed (one long task at a time).
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    // A replacement took its place and the pool serves a new map.
    common::wait_for("a replacement worker", || {
        let pids = pool.worker_pids();
        pids.len() == 2 && !pids.contains(&victim)
    });
    assert_eq!(pool.map(double, 0..100).unwrap()[99], 198);
    procs.add(&pool);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn sigkill_fails_a_blocking_map_with_the_pid_and_signal() {
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let victim = pool.worker_pids()[1];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        common::kill(victim, SIGKILL);
    });
    let err = pool.map_chunked(sleep_ms, [300u64; 8], 1).unwrap_err();
    killer.join().unwrap();
    assert!(
        matches!(err, Error::WorkerDied { pid, cause: ExitCause::Signaled { signal: SIGKILL, .. }, .. } if pid == victim),
        "{err:?}"
    );
    assert_eq!(pool.map(double, [1, 2, 3]).unwrap(), [2, 4, 6]);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn abort_in_a_task_is_reported_as_sigabrt() {
    fn abort_on_1(x: u64) -> u64 {
        if x == 1 {
            std::process::abort();
        }
        x
    }
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let results: Vec<_> = pool.imap(abort_on_1, 0..4, 1).collect();
    match &results[1] {
        Err(Error::WorkerDied {
            item: 1,
            cause: ExitCause::Signaled { signal, .. },
            ..
        }) => assert_eq!(*signal, SIGABRT),
        other => panic!("expected SIGABRT for item 1, got {other:?}"),
    }
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("SIGABRT")
    );
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn exit_in_a_task_is_reported_with_its_status() {
    fn exit_3(_: ()) {
        std::process::exit(3);
    }
    let pool = TestPool::new(1);
    let victim = pool.worker_pids()[0];
    let err = pool.apply(exit_3, ()).unwrap_err();
    match &err {
        Error::WorkerDied {
            pid, cause, item, ..
        } => {
            assert_eq!((*pid, *cause, *item), (victim, ExitCause::Exited(3), 0));
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    assert_eq!(pool.apply(double, 5).unwrap(), 10);
    assert_ne!(pool.worker_pids(), [victim]);
}

#[test]
fn running_out_of_memory_kills_only_that_worker() {
    /// Caps the worker's address space, then asks for more than the cap.
    fn allocate_too_much(gib: usize) -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        let cap = vm_kib * 1024 + (256 << 20);
        let lim = libc::rlimit {
            rlim_cur: cap,
            rlim_max: cap,
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
        let v = vec![1u8; gib << 30];
        v.len()
    }
    let pool = TestPool::new(2);
    let procs = Procs::of(&pool);
    let err = pool.apply(allocate_too_much, 4).unwrap_err();
    // Rust aborts on allocation failure.
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                cause: ExitCause::Signaled {
                    signal: SIGABRT,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
    drop(pool);
    procs.assert_gone();
}

#[test]
fn an_initializer_that_panics_fails_build() {
    let err = Pool::builder()
        .processes(2)
        .initializer(|| panic!("cannot load the model"))
        .build()
        .unwrap_err();
    match &err {
        Error::Initializer { pid, message } => {
            assert!(message.contains("cannot load the model"), "{message}");
            common::wait_for("the failed worker to be gone", || {
                common::ours(*pid).is_none()
            });
        }
        other => panic!("expected Initializer, got {other:?}"),
    }
}

#[test]
fn an_initializer_that_returns_an_error_fails_build() {
    let err = Pool::builder()
        .processes(2)
        .try_initializer(|| Err::<(), _>("config file missing"))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Initializer { message, .. } if message == "config file missing"),
        "{err:?}"
    );
}

#[test]
fn an_initializer_that_exits_or_dies_fails_build() {
    let err = Pool::builder()
        .processes(1)
        .initializer(|| std::process::exit(7))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Initializer { message, .. } if message.contains("exited with status 7")),
        "{err:?}"
    );
    let err = Pool::builder()
        .processes(1)
        .initializer(|| std::process::abort())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Initializer { message, .. } if message.contains("SIGABRT")),
        "{err:?}"
    );
}

#[test]
fn a_replacement_whose_initializer_fails_breaks_the_pool_clearly() {
    // The initializer succeeds twice (the first two workers), then fails.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::write(&runs, b"").unwrap();
    let path = runs.clone();
    let pool = TestPool::build(|| {
        Pool::builder()
            .processes(2)
            .try_initializer(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(b"x").unwrap();
                let n = std::fs::metadata(&path).unwrap().len();
                if n > 2 {
                    Err(format!("run {n}: out of licences"))
                } else {
                    Ok(())
                }
            })
            .build()
    });
    let mut procs = Procs::of(&pool);
    let victim = pool.worker_pids()[0];
    common::kill(victim, SIGKILL);
    common::wait_for("the pool to report the failed initializer", || {
        matches!(pool.map(double, [1]), Err(Error::Initializer { .. }))
    });
    let err = pool.apply(double, 1).unwrap_err();
    assert!(err.to_string().contains("out of licences"), "{err}");
    assert!(matches!(
        pool.map_async(double, [1]).get(),
        Err(Error::Initializer { .. })
    ));
    procs.add(&pool);
    drop(pool);
    procs.assert_gone();
}

/// A type whose `Deserialize` always fails (its `Serialize` works).
#[derive(Debug)]
struct Undecodable;

impl Serialize for Undecodable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(7)
    }
}

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Undecodable never decodes"))
    }
}

/// A type whose `Serialize` always fails.
#[derive(Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unencodable never encodes"))
    }
}

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|_| Unencodable)
    }
}

#[test]
fn a_result_that_does_not_decode_names_the_type_and_bytes() {
    fn make(_: u8) -> Undecodable {
        Undecodable
    }
    let pool = TestPool::new(1);
    let err = pool.map(make, [1, 2]).unwrap_err();
    match &err {
        Error::Decode {
            item,
            what,
            type_name,
            bytes,
            ..
        } => {
            assert_eq!((*item, *what), (0, "result"));
            assert!(type_name.ends_with("Undecodable"), "{type_name}");
            assert!(*bytes > 0);
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(err.to_string().contains("bytes"), "{err}");
    assert_eq!(pool.apply(double, 2).unwrap(), 4);
}

#[test]
fn an_argument_that_does_not_decode_names_the_type() {
    fn take(_: Undecodable) -> u8 {
        1
    }
    let pool = TestPool::new(1);
    let results: Vec<_> = pool.imap(take, [Undecodable, Undecodable], 2).collect();
    assert_eq!(results.len(), 2);
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(Error::Decode {
                item,
                what: "argument",
                type_name,
                reason,
                ..
            }) => {
                assert_eq!(*item, i);
                assert!(type_name.ends_with("Undecodable"), "{type_name}");
                // The type's own error text reaches the caller.
                assert!(reason.contains("Undecodable never decodes"), "{reason}");
            }
            other => panic!("expected an argument Decode error, got {other:?}"),
        }
    }
    assert_eq!(pool.apply(double, 2).unwrap(), 4);
}

#[test]
fn values_that_do_not_encode_are_errors_on_both_sides() {
    fn give(_: u8) -> Unencodable {
        Unencodable
    }
    fn take(_: Unencodable) -> u8 {
        1
    }
    let pool = TestPool::new(1);
    // A result: encoded in the worker, which survives.
    let worker = pool.worker_pids();
    let err = pool.apply(give, 1).unwrap_err();
    assert!(
        matches!(&err, Error::Encode { what: "result", type_name, reason, .. }
            if type_name.ends_with("Unencodable") && reason.contains("Unencodable never encodes")),
        "{err:?}"
    );
    assert_eq!(pool.worker_pids(), worker);
    // An argument: encoded in the parent, never sent.
    let err = pool.map(take, [Unencodable]).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Encode {
                what: "argument",
                item: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Pipes this process holds open for writing, as `pipe:[inode]` names.
/// A number that does not encode when it equals [`PICKY`].
#[derive(Debug, Deserialize)]
struct NoEncodeAt(u64);

/// A number that does not decode when it equals [`PICKY`].
#[derive(Debug, PartialEq, Serialize)]
struct NoDecodeAt(u64);

const PICKY: u64 = 150_001;

impl Serialize for NoEncodeAt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == PICKY {
            return Err(serde::ser::Error::custom("it will not encode"));
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for NoDecodeAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            PICKY => Err(serde::de::Error::custom("it will not decode")),
            v => Ok(NoDecodeAt(v)),
        }
    }
}

fn panic_every_10007th(x: u64) -> u64 {
    if x % 10_007 == 5 {
        panic!("boom on {x}");
    }
    x + 1
}

#[test]
fn failing_items_amid_a_big_default_chunk_map_fail_alone_with_their_index() {
    const N: u64 = 300_000;
    let pool = TestPool::new(2);
    // Tasks of thousands of items (default chunks): the lowest failing
    // item is the error.
    let err = pool.map(panic_every_10007th, 0..N).unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { item: 5, message, .. } if message.contains("boom on 5")),
        "{err:?}"
    );
    // Each item's own outcome: every panic is its item's error, every
    // other item has its value.
    let (mut ok, mut panicked) = (0u64, 0u64);
    for (i, r) in pool.imap_auto(panic_every_10007th, 0..N).enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(v, i as u64 + 1);
                ok += 1;
            }
            Err(Error::Panicked { item, message, .. }) => {
                assert_eq!((item, i as u64 % 10_007), (i, 5));
                assert!(message.contains(&format!("boom on {i}")), "{message}");
                panicked += 1;
            }
            Err(other) => panic!("item {i}: {other:?}"),
        }
    }
    let want_panics = (0..N).filter(|x| x % 10_007 == 5).count() as u64;
    assert_eq!((ok, panicked), (N - want_panics, want_panics));
    // An argument that does not encode, deep in the input, is named by
    // its index; nothing runs.
    let err = pool
        .map(|p: NoEncodeAt| p.0, (0..N).map(NoEncodeAt))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Encode { item, what: "argument", .. } if *item == PICKY as usize),
        "{err:?}"
    );
    // A result that does not decode fails its item, and the rest of its
    // task (whose bytes cannot be found after it); every other task's
    // items have their values.
    let err = pool.map(NoDecodeAt, 0..N).unwrap_err();
    assert!(
        matches!(&err, Error::Decode { item, what: "result", .. } if *item == PICKY as usize),
        "{err:?}"
    );
    let chunk = 1000;
    let (mut ok, mut failed) = (0u64, Vec::new());
    for (i, r) in pool.imap(NoDecodeAt, 0..N, chunk).enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(v, NoDecodeAt(i as u64));
                ok += 1;
            }
            Err(Error::Decode {
                item,
                what: "result",
                ..
            }) => {
                assert_eq!(item, i);
                failed.push(i as u64);
            }
            Err(other) => panic!("item {i}: {other:?}"),
        }
    }
    let task_end = (PICKY / chunk as u64 + 1) * chunk as u64;
    assert_eq!(failed, (PICKY..task_end).collect::<Vec<_>>());
    assert_eq!(ok, N - failed.len() as u64);
}

fn write_pipes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if fd <= 2 || !target.starts_with("pipe:") {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            out.push((fd, target));
        }
    }
    out
}

/// Writes `bytes` to this worker's result pipe: the one pipe it holds open
/// for writing that the parent (whose write pipes are `parents`) does not.
fn write_to_result_pipe(bytes: &[u8], parents: &[String]) {
    let mine: Vec<i32> = write_pipes()
        .into_iter()
        .filter(|(_, name)| !parents.contains(name))
        .map(|(fd, _)| fd)
        .collect();
    assert_eq!(mine.len(), 1, "expected exactly one result pipe: {mine:?}");
    // SAFETY: writing a byte slice to a descriptor we hold.
    let n = unsafe { libc::write(mine[0], bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

fn parent_pipes() -> Vec<String> {
    write_pipes().into_iter().map(|(_, name)| name).collect()
}

#[test]
fn garbage_on_a_result_pipe_is_a_frame_error_and_the_worker_is_replaced() {
    fn unknown_kind(parents: Vec<String>) {
        let mut frame = 3u64.to_le_bytes().to_vec();
        frame.extend_from_slice(&[99, 0, 0]);
        write_to_result_pipe(&frame, &parents);
    }
    fn absurd_length(parents: Vec<String>) {
        write_to_result_pipe(&u64::MAX.to_le_bytes(), &parents);
    }
    fn wrong_task(parents: Vec<String>) {
        // A plausible result header for a task the worker does not hold,
        // promising a body that never comes: refused at the header.
        let mut frame = 1000u64.to_le_bytes().to_vec();
        frame.push(4);
        frame.extend_from_slice(&u64::MAX.to_le_bytes());
        write_to_result_pipe(&frame, &parents);
    }
    let pool = TestPool::new(1);
    let mut procs = Procs::of(&pool);
    for (f, expect) in [
        (
            unknown_kind as fn(Vec<String>),
            "unexpected frame of kind 99 (3 bytes)",
        ),
        (
            absurd_length,
            "frame length 18446744073709551615 is out of range",
        ),
        (
            wrong_task,
            "a result for task 18446744073709551615, but task",
        ),
    ] {
        let victim = pool.worker_pids()[0];
        let err = pool.apply(f, parent_pipes()).unwrap_err();
        match &err {
            Error::Frame { pid, detail } => {
                assert_eq!(*pid, victim);
                assert!(detail.contains(expect), "{detail}");
            }
            other => panic!("expected Frame, got {other:?}"),
        }
        common::wait_for("a replacement", || {
            let pids = pool.worker_pids();
            pids.len() == 1 && pids[0] != victim
        });
        procs.add(&pool);
        assert_eq!(pool.apply(double, 3).unwrap(), 6);
    }
    drop(pool);
    procs.assert_gone();
}

#[test]
fn a_frame_cut_short_by_a_clean_exit_names_the_byte_counts() {
    fn cut_short(parents: Vec<String>) {
        write_to_result_pipe(&[1, 2, 3, 4, 5], &parents); // 5 of 8 length bytes
        // SAFETY: ends this worker process at once.
        unsafe { libc::_exit(0) };
    }
    let pool = TestPool::new(1);
    let err = pool.apply(cut_short, parent_pipes()).unwrap_err();
    match &err {
        Error::Frame { detail, .. } => {
            assert!(detail.contains("after 5 of 8 bytes"), "{detail}");
            assert!(detail.contains("exited with status 0"), "{detail}");
        }
        other => panic!("expected Frame, got {other:?}"),
    }
    assert_eq!(pool.apply(double, 3).unwrap(), 6);
}

#[test]
fn a_result_frame_with_a_run_that_is_cut_short_or_does_not_fit_is_a_frame_error() {
    /// A result frame for task `id` carrying a run (the kind byte's top bit,
    /// then the run's place, length and element size), its body 1000 bytes.
    fn run_head(id: u64, at: u64, len: u64, elem: u64) -> Vec<u8> {
        let mut f = (1000u64 + 24).to_le_bytes().to_vec();
        f.push(4 | 0x80);
        for v in [at, len, elem, id, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }
    fn cut_in_the_run(parents: Vec<String>) {
        // The pool numbers tasks from 0; this pool ran exactly one before.
        let mut f = run_head(1, 17 + 9, 512, 8);
        f.extend_from_slice(&[7; 100]); // 9 bytes of payload, 91 of the run
        write_to_result_pipe(&f, &parents);
        // SAFETY: ends this worker process at once.
        unsafe { libc::_exit(0) };
    }
    fn does_not_fit(parents: Vec<String>) {
        write_to_result_pipe(&run_head(u64::MAX, 17, 5000, 8), &parents);
    }
    let pool = TestPool::new(1);
    assert_eq!(pool.apply(double, 3).unwrap(), 6);
    let err = pool.apply(cut_in_the_run, parent_pipes()).unwrap_err();
    match &err {
        Error::Frame { detail, .. } => {
            assert!(detail.contains("after 149 of 1032 bytes"), "{detail}");
            assert!(detail.contains("exited with status 0"), "{detail}");
        }
        other => panic!("expected Frame, got {other:?}"),
    }
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    let err = pool.apply(does_not_fit, parent_pipes()).unwrap_err();
    match &err {
        Error::Frame { detail, .. } => {
            assert!(
                detail.contains("5000 bytes of 8-byte numbers at byte 17"),
                "{detail}"
            );
            assert!(detail.contains("do not fit"), "{detail}");
        }
        other => panic!("expected Frame, got {other:?}"),
    }
    assert_eq!(pool.apply(double, 5).unwrap(), 10);
}

#[test]
fn build_hung_while_another_thread_ran_a_panic_hook() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static IN_HOOK: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    // The pool's own hook goes in with the first pool of the process; this
    // test is about a pool built while *another* hook runs.
    drop(Pool::new(1).unwrap());
    let previous = std::sync::Arc::new(std::panic::take_hook());
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("slow-hook") {
            // Holds std's hook lock (for reading) until released.
            IN_HOOK.store(true, SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !RELEASE.load(SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            chained(info);
        }
    }));
    let slow = std::thread::Builder::new()
        .name("slow-hook".into())
        .spawn(|| std::panic::catch_unwind(|| panic!("caught")).is_err())
        .unwrap();
    common::wait_for("the slow hook to start", || IN_HOOK.load(SeqCst));
    // Build and use a pool while the hook runs: its zygote and workers are
    // forks of a process whose hook lock has a reader that never leaves.
    let outcome = within(20, "build() and map() during a panic hook", || {
        let pool = TestPool::new(2);
        let results: Vec<_> = pool.imap(panic_on_3, 0..6, 1).collect();
        drop(pool);
        results
    });
    RELEASE.store(true, SeqCst);
    assert!(slow.join().unwrap());
    for (i, r) in outcome.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(Error::Panicked {
                item: 3, message, ..
            }) => {
                // Captured by the pool's hook, not printed.
                assert!(message.contains("boom on 3"), "{message}");
                assert!(message.contains("tests/faults.rs"), "{message}");
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert!(outcome[3].is_err());
    // Put the previous hook back for the other tests.
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| previous(info)));
}

#[test]
fn build_waited_forever_for_a_stuck_initializer() {
    let before = std::time::Instant::now();
    let err = within(30, "build() with a stuck initializer", || {
        Pool::builder()
            .processes(2)
            .initializer(|| std::thread::sleep(Duration::from_secs(3600)))
            .start_timeout(Duration::from_millis(300))
            .build()
            .unwrap_err()
    });
    match &err {
        Error::StartTimeout {
            waited,
            waiting_for,
        } => {
            assert_eq!(*waited, Duration::from_millis(300));
            assert!(
                waiting_for.contains("0 of 2 workers were ready"),
                "{waiting_for}"
            );
            assert!(
                waiting_for.contains("had not reported ready"),
                "{waiting_for}"
            );
        }
        other => panic!("expected StartTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains("start_timeout"), "{err}");
    // Not a timing assertion: the stuck initializers were killed, so the
    // 3600 s sleep did not have to end.
    assert!(before.elapsed() < Duration::from_secs(3600));
}

/// Path of a marker file: while it exists, the test initializer below
/// sleeps (up to 20 s) before reporting ready.
fn hold_marker() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("forkpool-hold-{}", std::process::id()))
}

#[test]
fn a_replacement_killed_before_ready_broke_the_pool() {
    let marker = hold_marker();
    let _ = std::fs::remove_file(&marker);
    let m = marker.clone();
    let mut pool = TestPool::build(move || {
        Pool::builder()
            .processes(1)
            .initializer(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while m.exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .build()
    });
    let first = pool.worker_pids()[0];
    // Replacements now wait in their initializer: kill one there.
    std::fs::write(&marker, b"").unwrap();
    common::kill(first, SIGKILL);
    let mut starting = first;
    common::wait_for("a replacement", || {
        starting = pool.worker_pids().first().copied().unwrap_or(first);
        starting != first
    });
    pool.record();
    common::kill(starting, SIGKILL);
    common::wait_for("a second replacement", || {
        let p = pool.worker_pids();
        !p.is_empty() && p[0] != starting
    });
    pool.record();
    std::fs::remove_file(&marker).unwrap();
    // The pool replaced the worker killed before READY and serves.
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
}

#[test]
fn workers_dying_the_same_way_at_start_break_the_pool_and_say_so() {
    // No initializer: every worker forked after the first is killed before
    // READY by an initializer-free path: its own `exit` in the initializer
    // is the deterministic stand-in.
    let err = Pool::builder()
        .processes(1)
        .initializer(|| std::process::exit(7))
        .build()
        .unwrap_err();
    match &err {
        Error::Initializer { message, .. } => {
            assert!(message.contains("3 workers in a row"), "{message}");
            assert!(message.contains("exited with status 7"), "{message}");
        }
        other => panic!("expected Initializer, got {other:?}"),
    }
    // An initializer that *reports* failure breaks it at once.
    let err = Pool::builder()
        .processes(1)
        .try_initializer(|| Err::<(), _>("no licence"))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Initializer { message, .. } if message == "no licence"),
        "{err:?}"
    );
}

#[test]
fn descriptor_exhaustion_blamed_the_oom_killer_and_leaked_a_descriptor() {
    const NAME: &str = "descriptor_exhaustion_blamed_the_oom_killer_and_leaked_a_descriptor";
    if !common::in_own_process(NAME, 120) {
        return;
    }
    // In a process of its own: the descriptor limit is process-wide.
    let before = common::fd_table();
    let limit = *before.keys().max().unwrap() as u64 + 64;
    common::set_nofile(limit);
    // Another pool is alive: a new zygote closes that pool's descriptors,
    // so it has room to make a worker's pipes when the program has none
    // left to receive them in (the pipe ends arrive cut short).
    let other = Pool::new(1).unwrap();
    let with_other = common::fd_table();
    let mut calls = std::collections::BTreeSet::new();
    for free in 0..=8 {
        let fillers = common::fill_fds_leaving(free);
        let outcome = Pool::new(2).and_then(|pool| {
            let procs = Procs::of(&pool);
            let r = pool.map(double, 0..10);
            drop(pool);
            procs.assert_gone();
            r
        });
        drop(fillers);
        match outcome {
            Ok(v) => assert_eq!(v[9], 18),
            Err(
                ref err @ Error::DescriptorLimit {
                    call,
                    errno,
                    limit: l,
                    ..
                },
            ) => {
                assert!(errno == libc::EMFILE, "free {free}: {err}");
                assert_eq!(l, limit, "free {free}: {err}");
                let text = err.to_string();
                assert!(text.contains(call) && text.contains("EMFILE"), "{text}");
                assert!(
                    text.contains(&format!("RLIMIT_NOFILE is {limit}")),
                    "{text}"
                );
                calls.insert(call);
            }
            Err(other) => panic!("free {free}: expected DescriptorLimit or success, got {other:?}"),
        }
        // Nothing leaked: not a descriptor that did arrive, not a pool's.
        assert_eq!(
            common::fd_table(),
            with_other,
            "free {free}: descriptors leaked"
        );
    }
    // The sweep met the cut-short message and the parent's own limit.
    assert!(calls.contains("recvmsg"), "{calls:?}");
    assert!(calls.contains("socketpair"), "{calls:?}");
    assert_eq!(other.apply(double, 4).unwrap(), 8);
    drop(other);
    assert_eq!(common::fd_table(), before);
    // And a pool built now inherits nothing and works.
    let pool = TestPool::new(2);
    assert_eq!(pool.map(double, 0..10).unwrap()[9], 18);
}

/// Sleeps `ms` milliseconds (an "endless" task when large); returns `ms`.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn an_endless_task_held_its_caller_forever() {
    let limit = Duration::from_millis(400);
    let (results, before, after) = within(60, "imap with an endless task", move || {
        // ANCHOR: task_timeout
        let pool = TestPool::build(|| Pool::builder().processes(2).task_timeout(limit).build());
        let before = pool.worker_pids();
        // Item 2 sleeps for an hour: it fails alone with TaskTimeout after
        // `limit`, its worker is killed and replaced; the others succeed.
        let items = [5u64, 5, 3_600_000, 5, 5, 5, 5, 5];
        let results: Vec<_> = pool.imap(nap, items, 1).collect();
        // ANCHOR_END: task_timeout
        // The killed worker is replaced; the pool serves on.
        common::wait_for("a replacement", || {
            let p = pool.worker_pids();
            p.len() == 2 && p.iter().any(|x| !before.contains(x))
        });
        let after = pool.map(double, 0..10);
        (results, before, after)
    });
    for (i, r) in results.iter().enumerate() {
        if i == 2 {
            match r {
                Err(
                    e @ Error::TaskTimeout {
                        item,
                        pid,
                        limit: l,
                        ran,
                    },
                ) => {
                    assert_eq!((*item, *l), (2, limit));
                    assert!(before.contains(pid), "{pid} was not a worker: {before:?}");
                    assert!(*ran >= limit, "{ran:?}");
                    let text = e.to_string();
                    assert!(text.contains("item 2"), "{text}");
                    assert!(text.contains(&format!("worker {pid}")), "{text}");
                    assert!(text.contains(&format!("{limit:?}")), "{text}");
                }
                other => panic!("item 2: expected TaskTimeout, got {other:?}"),
            }
        } else {
            assert_eq!(*r.as_ref().unwrap(), 5, "item {i}");
        }
    }
    assert_eq!(after.unwrap()[9], 18);
}

#[test]
fn a_stopped_worker_held_its_task_forever() {
    let limit = Duration::from_millis(500);
    let (err, victim, served) = within(60, "apply on a stopped worker", move || {
        let mut pool = TestPool::build(|| Pool::builder().processes(1).task_timeout(limit).build());
        let victim = pool.worker_pids()[0];
        let h = pool.apply_async(nap, 200);
        common::kill(victim, libc::SIGSTOP);
        let err = h.get().unwrap_err();
        pool.record();
        let served = pool.apply(double, 21);
        (err, victim, served)
    });
    assert!(
        matches!(err, Error::TaskTimeout { item: 0, pid, limit: l, .. } if pid == victim && l == limit),
        "{err:?}"
    );
    assert_eq!(served.unwrap(), 42);
}

#[test]
fn the_task_timeout_is_per_task_not_per_call() {
    // Twelve 50 ms tasks on one worker take longer than the limit in all;
    // none alone comes near it.
    let limit = Duration::from_millis(400);
    let pool = TestPool::build(|| Pool::builder().processes(1).task_timeout(limit).build());
    let worker = pool.worker_pids();
    let out = pool.map_chunked(nap, [50u64; 12], 1).unwrap();
    assert_eq!(out, [50; 12]);
    assert_eq!(pool.worker_pids(), worker, "no worker was killed");
}
