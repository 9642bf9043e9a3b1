//! `Buffer<T>`: big arrays passed by value as sealed memory files, with
//! real worker processes.

mod common;

use common::TestPool;
use forkpool::{Buffer, BufferMut, Error, Plain, Pool};
use serde::{Deserialize, Serialize};

fn echo<T: Plain>(b: Buffer<T>) -> Buffer<T> {
    b
}

/// A buffer of `n` values made from `f(i)` in the worker.
fn pattern<T: Plain>(n: usize, f: fn(usize) -> T) -> Vec<T> {
    (0..n).map(f).collect()
}

fn round_trip<T: Plain + PartialEq + std::fmt::Debug>(pool: &Pool, f: fn(usize) -> T) {
    for n in [0, 1, 1000, 300_000] {
        let v = pattern(n, f);
        let b = Buffer::from_slice(&v).unwrap();
        let back = pool.apply(echo::<T>, b.clone()).unwrap();
        assert_eq!(
            back.as_slice(),
            &v[..],
            "{} x {n}",
            std::any::type_name::<T>()
        );
        // The same memory came back: nothing was copied on the way.
        let same = |x: &Buffer<T>| {
            let st = nix::sys::stat::fstat(x.as_fd()).unwrap();
            (st.st_dev, st.st_ino)
        };
        assert_eq!(same(&back), same(&b));
    }
}

#[test]
fn every_plain_type_round_trips_empty_small_and_large() {
    let pool = TestPool::new(2);
    round_trip(&pool, |i| i as u8);
    round_trip(&pool, |i| i as i8);
    round_trip(&pool, |i| i as u16);
    round_trip(&pool, |i| (i as i16).wrapping_neg());
    round_trip(&pool, |i| (i as u32).wrapping_mul(7));
    round_trip(&pool, |i| -(i as i32));
    round_trip(&pool, |i| (i as u64) << 20);
    round_trip(&pool, |i| -(i as i64));
    round_trip(&pool, |i| (i as u128) << 70);
    round_trip(&pool, |i| -(i as i128) << 70);
    round_trip(&pool, |i| i as f32 / 3.0);
    round_trip(&pool, |i| i as f64 / 3.0);
    round_trip(&pool, |i| i);
    round_trip(&pool, |i| -(i as isize));
}

fn big(seed: u64) -> Buffer<f64> {
    Buffer::from_fn(16 << 20, |i| (i as u64 ^ seed) as f64).unwrap()
}

fn checksum(b: Buffer<f64>) -> (usize, f64) {
    (b.len(), b.iter().step_by(4099).sum())
}

#[test]
fn a_128_mib_buffer_goes_to_the_worker_and_a_new_one_comes_back() {
    let pool = TestPool::new(1);
    let b = big(5);
    let expect = (b.len(), b.iter().step_by(4099).sum::<f64>());
    assert_eq!(pool.apply(checksum, b).unwrap(), expect);
    let made = pool.apply(big, 5).unwrap();
    assert_eq!(checksum(made), expect);
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Frame {
    name: String,
    pixels: Buffer<u16>,
    layers: Vec<Buffer<f32>>,
    note: Option<Buffer<i64>>,
}

fn brighten(mut f: Frame) -> Frame {
    f.name.push('!');
    f.pixels = Buffer::from_fn(f.pixels.len(), |i| f.pixels[i] + 1).unwrap();
    f.layers.reverse();
    f.note = None;
    f
}

fn frame(i: usize) -> Frame {
    Frame {
        name: format!("f{i}"),
        pixels: Buffer::from_fn(1000 + i, |j| (i + j) as u16).unwrap(),
        layers: (0..i % 4)
            .map(|k| Buffer::from_slice(&[k as f32; 10]).unwrap())
            .collect(),
        note: Some(Buffer::from_slice(&[i as i64]).unwrap()),
    }
}

fn brightened(i: usize) -> Frame {
    let mut f = frame(i);
    f.name.push('!');
    f.pixels = Buffer::from_fn(1000 + i, |j| (i + j) as u16 + 1).unwrap();
    f.layers.reverse();
    f.note = None;
    f
}

#[test]
fn buffers_nested_in_structs_travel_through_map_imap_and_apply_async() {
    let pool = TestPool::new(2);
    let n = 200;
    let want: Vec<Frame> = (0..n).map(brightened).collect();
    // map: chunks of several items, each with its own buffers.
    let got = pool.map(brighten, (0..n).map(frame)).unwrap();
    assert_eq!(got, want);
    // map with chunks of one, and imap / imap_unordered.
    assert_eq!(
        pool.map_chunked(brighten, (0..n).map(frame), 1).unwrap(),
        want
    );
    let got: Vec<Frame> = pool
        .imap(brighten, (0..n).map(frame), 3)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, want);
    let mut got: Vec<Frame> = pool
        .imap_unordered(brighten, (0..n).map(frame), 5)
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort_by_key(|f| f.pixels[0]);
    assert_eq!(got, want);
    let pending: Vec<_> = (0..20)
        .map(|i| pool.apply_async(brighten, frame(i)))
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.get().unwrap(), brightened(i));
    }
}

/// Tries to change the bytes of the buffer it was given, through its
/// descriptor (write, then a writable shared mapping): how each failed.
fn try_to_write(b: Buffer<u8>) -> (bool, bool, Buffer<u8>) {
    let fd = b.as_fd().try_clone_to_owned().unwrap();
    let mut file = std::fs::File::from(fd);
    let wrote = std::io::Write::write(&mut file, &[42]).is_ok();
    // SAFETY: a test probing that the kernel refuses this mapping.
    let mapped = unsafe { memmap2::MmapOptions::new().len(1).map_mut(&file) }.is_ok();
    (wrote, mapped, b)
}

#[test]
fn neither_side_can_change_a_buffer_once_sent() {
    let pool = TestPool::new(1);
    let mut m = BufferMut::<u8>::zeroed(4096).unwrap();
    m.fill(7);
    let b = m.freeze().unwrap();
    // The worker cannot change what the parent sent...
    let (wrote, mapped, back) = pool.apply(try_to_write, b.clone()).unwrap();
    assert!(!wrote && !mapped, "a worker changed a sent buffer");
    // ...and the parent cannot change what it sent.
    let (wrote, mapped, _) = try_to_write(b.clone());
    assert!(!wrote && !mapped, "the sender changed a sent buffer");
    assert!(back.iter().chain(b.iter()).all(|&x| x == 7));
}

fn fd_count_in_worker(b: Buffer<u32>) -> (usize, Buffer<u32>) {
    (common::fd_count(), b)
}

#[test]
fn a_thousand_round_trips_leak_no_descriptor_on_either_side() {
    const NAME: &str = "a_thousand_round_trips_leak_no_descriptor_on_either_side";
    // In a process of its own: other tests open descriptors meanwhile.
    if !common::in_own_process(NAME, 300) {
        return;
    }
    let pool = TestPool::new(2);
    let b = Buffer::from_fn(10_000, |i| i as u32).unwrap();
    // Warm up: every worker has run a task.
    let first = pool
        .map(fd_count_in_worker, vec![b.clone(); 8])
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .max()
        .unwrap();
    let before = common::fd_count();
    let mut worker_counts = Vec::new();
    for i in 0..1000 {
        let (n, back) = pool.apply(fd_count_in_worker, b.clone()).unwrap();
        assert_eq!(back[i], i as u32);
        worker_counts.push(n);
    }
    let results = pool.map(fd_count_in_worker, vec![b.clone(); 500]).unwrap();
    drop(results);
    assert_eq!(common::fd_count(), before, "the parent leaked descriptors");
    // A worker holds the argument's descriptor while it runs the task, and
    // nothing more from one task to the next.
    assert!(
        worker_counts.iter().all(|&n| n == first),
        "worker descriptor counts: first {first}, then {:?}",
        worker_counts
            .iter()
            .filter(|&&n| n != first)
            .take(10)
            .collect::<Vec<_>>()
    );
}

fn die_holding(b: Buffer<u8>) -> usize {
    if b[0] == 1 {
        std::process::abort();
    }
    b.len()
}

#[test]
fn a_worker_dying_with_a_buffer_fails_that_item_and_leaks_nothing() {
    const NAME: &str = "a_worker_dying_with_a_buffer_fails_that_item_and_leaks_nothing";
    if !common::in_own_process(NAME, 120) {
        return;
    }
    let mut pool = TestPool::new(2);
    let before = common::fd_count();
    let items: Vec<Buffer<u8>> = (0..10u8)
        .map(|i| Buffer::from_slice(&[i; 100]).unwrap())
        .collect();
    let out: Vec<_> = pool
        .imap(die_holding, items, 1)
        .collect::<Vec<forkpool::Result<usize>>>();
    let Err(Error::WorkerDied { item: 1, pid, .. }) = out[1] else {
        panic!("{:?}", out[1]);
    };
    // The others ran, or were held by the same worker when it died.
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(n) => assert_eq!(*n, 100, "item {i}"),
            Err(Error::WorkerDied { pid: p, .. }) if *p == pid && i != 0 => {}
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    assert!(out.iter().filter(|r| r.is_ok()).count() >= 5, "{out:?}");
    // Once the replacement worker's pipes and socket have arrived, the
    // parent holds exactly what it held before: the dead worker's ends
    // and every buffer descriptor are closed.
    common::wait_for("the descriptor count to settle", || {
        common::fd_count() == before
    });
    pool.record();
}

fn many_buffers(n: usize) -> Vec<Buffer<u8>> {
    (0..n)
        .map(|i| Buffer::from_slice(&[i as u8]).unwrap())
        .collect()
}

#[test]
fn a_result_with_more_buffers_than_one_datagram_carries_arrives_whole() {
    let pool = TestPool::new(1);
    let got = pool.apply(many_buffers, 600).unwrap();
    assert_eq!(got.len(), 600);
    assert!(got.iter().enumerate().all(|(i, b)| b[..] == [i as u8]));
    let lens = pool.apply(|v: Vec<Buffer<u8>>| v.len(), got).unwrap();
    assert_eq!(lens, 600);
}

#[test]
fn running_out_of_descriptors_for_result_buffers_is_a_descriptor_limit_error() {
    const NAME: &str = "running_out_of_descriptors_for_result_buffers_is_a_descriptor_limit_error";
    if !common::in_own_process(NAME, 120) {
        return;
    }
    // The workers are forked with the default limit; then the program's
    // own limit drops below what 300 result descriptors need.
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(many_buffers, 3).unwrap().len(), 3);
    let before = common::fd_table();
    let limit = *before.keys().max().unwrap() as u64 + 50;
    common::set_nofile(limit);
    match pool.apply(many_buffers, 300) {
        Err(ref e @ Error::DescriptorLimit { call, limit: l, .. }) => {
            assert_eq!((call, l), ("recvmsg", limit), "{e}");
            assert!(e.to_string().contains("MSG_CTRUNC"), "{e}");
        }
        other => panic!("expected DescriptorLimit, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(common::fd_table(), before, "descriptors leaked");
    // The pool goes on.
    assert_eq!(pool.apply(many_buffers, 3).unwrap().len(), 3);
}

#[test]
fn a_buffer_in_a_context_travels_as_numbers() {
    let pool = TestPool::new(2);
    let table = Buffer::from_fn(1000, |i| i as u64 * 3).unwrap();
    fn lookup(t: &Buffer<u64>, i: usize) -> u64 {
        t[i]
    }
    let got = pool.map_with(&table, lookup, vec![0, 10, 999]).unwrap();
    assert_eq!(got, vec![0, 30, 2997]);
}

#[test]
fn a_process_forked_while_a_buffer_was_written_cannot_change_it_once_frozen() {
    let mut m = BufferMut::<u8>::zeroed(4096).unwrap();
    m.fill(1);
    let at = m.as_mut_ptr() as usize;
    let (go_r, go_w) = nix::unistd::pipe().unwrap();
    let (done_r, done_w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only reads and writes pipes, stores one byte
    // through the writable mapping it inherited, and `_exit`s.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // Our copy of the write end goes, so a parent that failed
            // (and closed its own) ends this wait with EOF.
            drop(go_w);
            let mut b = [0u8];
            if nix::unistd::read(&go_r, &mut b) == Ok(1) {
                // SAFETY: `at` is the start of the 4096-byte shared
                // mapping this process inherited, still mapped here.
                unsafe { *(at as *mut u8) = 9 };
                let _ = nix::unistd::write(&done_w, &[1]);
            }
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((go_r, done_w));
    // The child still maps the pages writable: freezing must not seal
    // those pages and call them immutable.
    let b = match m.freeze() {
        Ok(b) => b,
        Err(e) => {
            drop(go_w); // the child sees EOF and exits
            let _ = nix::sys::wait::waitpid(child, None);
            panic!("{e}")
        }
    };
    nix::unistd::write(&go_w, &[1]).unwrap();
    let mut got = [0u8];
    assert_eq!(nix::unistd::read(&done_r, &mut got).unwrap(), 1);
    nix::sys::wait::waitpid(child, None).unwrap();
    assert!(b.iter().all(|&x| x == 1), "a write after freeze was seen");
}

fn count(v: Vec<Buffer<u8>>) -> usize {
    v.len()
}

#[test]
fn a_worker_out_of_descriptors_for_argument_buffers_says_so_and_goes_on() {
    // Only the worker's limit is low (set by its initializer).
    let pool = TestPool::build(|| {
        Pool::builder()
            .processes(1)
            .initializer(|| common::set_nofile(40))
            .build()
    });
    match pool.apply(count, many_buffers(300)) {
        Err(Error::Decode { what, reason, .. }) => {
            assert_eq!(what, "argument");
            assert!(reason.contains("MSG_CTRUNC"), "{reason}");
            assert!(reason.contains("RLIMIT_NOFILE is 40"), "{reason}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The descriptors that did arrive were closed, and those that were
    // left behind are dropped by the next task that looks for its own.
    for _ in 0..3 {
        assert_eq!(pool.apply(count, many_buffers(20)).unwrap(), 20);
    }
}

/// A buffer's first value and length, and the descriptors the worker has
/// open while it runs the task.
fn tag_and_fds(b: Buffer<u8>) -> (u8, usize, usize) {
    (b[0], b.len(), common::fd_count())
}

/// Lowers the send buffer of the parent's ends of the workers' side
/// channels (the `SOCK_SEQPACKET` sockets whose peer is the zygote, which
/// made them; the control socket's peer is this process) to the least the
/// kernel allows, which holds about 6 datagrams: on this machine
/// `net.core.wmem_max` lets the pool's 4 MiB request stand (about 10 900
/// datagrams; with the kernel's default cap of 208 KiB, about 550). Only
/// the size changes: the pool's own send path is what is exercised.
/// Returns how many sockets it changed.
fn shrink_side_send_buffers() -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    use std::os::fd::BorrowedFd;
    let me = std::process::id() as i32;
    let mut changed = 0;
    for fd in common::fd_table().into_keys() {
        // SAFETY: `fd` is open in this process for the duration of this
        // loop iteration (it is one of the pool's, or the test's own, and
        // nothing closes descriptors meanwhile: the pool is idle).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let seqpacket = getsockopt(&fd, sockopt::SockType)
            .is_ok_and(|t| t == nix::sys::socket::SockType::SeqPacket);
        let peer = getsockopt(&fd, sockopt::PeerCredentials).map(|c| c.pid());
        if seqpacket && peer.is_ok_and(|p| p != me) {
            setsockopt(&fd, sockopt::SndBuf, &1).unwrap();
            changed += 1;
        }
    }
    changed
}

#[test]
fn buffers_of_tasks_committed_to_a_stopped_worker_are_not_dropped_when_the_side_socket_fills() {
    const NAME: &str =
        "buffers_of_tasks_committed_to_a_stopped_worker_are_not_dropped_when_the_side_socket_fills";
    // In a process of its own: it changes the pool's sockets and counts
    // descriptors.
    if !common::in_own_process(NAME, 120) {
        return;
    }
    let pool = TestPool::new(1);
    let item = |i: usize| Buffer::from_fn(100 + i, |_| i as u8).unwrap();
    // The function's cost is known (tiny): one-task jobs of it are
    // committed many at a time to a worker, up to the scheduler's time
    // budget, without waiting for its results.
    let warm = pool.map_chunked(tag_and_fds, (0..50).map(item), 1).unwrap();
    let first = warm[49].2;
    assert_eq!(
        shrink_side_send_buffers(),
        1,
        "one worker, one side channel"
    );
    let before = common::fd_count();
    let victim = pool.worker_pids()[0];
    common::kill(victim, libc::SIGSTOP);
    common::wait_for("the worker to stop", || {
        common::ours(victim).as_deref() == Some("T")
    });
    // Far more tasks with a buffer each than the socket holds datagrams.
    let n = 200;
    let handles: Vec<_> = (0..n)
        .map(|i| pool.apply_async(tag_and_fds, item(i)))
        .collect();
    common::kill(victim, libc::SIGCONT);
    for (i, h) in handles.into_iter().enumerate() {
        let (value, len, fds) = h
            .get()
            .unwrap_or_else(|e| panic!("item {i} of {n} failed: {e}"));
        assert_eq!((value, len), (i as u8, 100 + i), "item {i}");
        // The worker holds its task's descriptor, and nothing more.
        assert_eq!(fds, first, "worker descriptors at item {i}");
    }
    assert_eq!(pool.worker_pids(), [victim], "no worker was replaced");
    common::wait_for("the parent's descriptors to settle", || {
        common::fd_count() == before
    });
}

/// Encodes as the pool's out-of-band mark for a buffer of 4 bytes, with no
/// buffer behind it, and decodes as a buffer: what a hand-written serde
/// impl that disagrees with itself can send.
struct NamesAMissingBuffer;

impl Serialize for NamesAMissingBuffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (1u8, 4u64).serialize(s)
    }
}

impl<'de> Deserialize<'de> for NamesAMissingBuffer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Buffer::<u8>::deserialize(d).map(|_| NamesAMissingBuffer)
    }
}

fn take_it(_: NamesAMissingBuffer) -> u8 {
    1
}

#[test]
fn a_task_naming_a_buffer_it_did_not_carry_waited_for_its_descriptor_forever() {
    let pool = TestPool::new(1);
    let (bad, good) = common::within(60, "a task naming a missing buffer", move || {
        let bad = pool.apply(take_it, NamesAMissingBuffer);
        let good = pool.apply(echo::<u8>, Buffer::from_slice(&[1u8, 2, 3]).unwrap());
        (bad, good.map(|b| b.as_slice().to_vec()))
    });
    match bad {
        Err(e @ Error::Decode { .. }) => assert!(
            e.to_string().contains("buffer descriptors"),
            "the error says a descriptor is missing: {e}"
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The worker goes on serving tasks that do carry buffers.
    assert_eq!(good.unwrap(), [1, 2, 3]);
}
