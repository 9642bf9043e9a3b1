//! Big values by `apply`, there and back, beside their ceilings measured in
//! the same run: a `memcpy` into memory already faulted in, a copy into a
//! fresh allocation (what any decode into a new `Vec` costs at least), and
//! the same bytes through a pair of raw 1 MiB pipes to a forked echo
//! process and back.
//!
//! Run: `cargo bench -p forkpool --bench payload`.

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use forkpool::Pool;

fn echo_u8(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_f64(v: Vec<f64>) -> Vec<f64> {
    v
}

const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (1 << 20, "1MiB"), (64 << 20, "64MiB")];

/// A forked process that reads `len` bytes from one pipe and writes them
/// back on another.
struct Echo {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    child: nix::unistd::Pid,
}

fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    true
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(_) => return false,
        }
    }
    true
}

impl Echo {
    fn start(len: usize) -> Echo {
        let (a_r, a_w) = nix::unistd::pipe().unwrap();
        let (b_r, b_w) = nix::unistd::pipe().unwrap();
        for fd in [&a_w, &b_w] {
            let _ = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        let mut buf = vec![0u8; len];
        // SAFETY: the child only reads and writes pipes and its own buffer
        // (allocated before the fork), then `_exit`s.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(a_w);
                drop(b_r);
                while read_exact(&a_r, &mut buf) && write_all(&b_w, &buf) {}
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => Echo {
                to_child: Some(a_w),
                from_child: b_r,
                child,
            },
        }
    }

    fn round_trip(&self, out: &[u8], back: &mut [u8]) {
        assert!(write_all(self.to_child.as_ref().unwrap(), out));
        assert!(read_exact(&self.from_child, back));
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        drop(self.to_child.take()); // EOF ends the child
        let _ = nix::sys::wait::waitpid(self.child, None);
    }
}

fn payload_round_trip(c: &mut Criterion) {
    let pool = Pool::new(1).unwrap();
    let mut g = c.benchmark_group("payload_round_trip");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (len, name) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let src = vec![3u8; len];
        let mut dst = vec![1u8; len];
        g.bench_function(BenchmarkId::new("ceiling_memcpy", name), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
        g.bench_function(BenchmarkId::new("ceiling_copy_to_new_vec", name), |b| {
            b.iter(|| black_box(black_box(&src).to_vec()))
        });
        let echo = Echo::start(len);
        g.bench_function(
            BenchmarkId::new("ceiling_raw_pipes_there_and_back", name),
            |b| b.iter(|| echo.round_trip(black_box(&src), &mut dst)),
        );
        drop(echo);
        g.bench_function(BenchmarkId::new("apply_vec_u8", name), |b| {
            b.iter_batched(
                || src.clone(),
                |v| black_box(pool.apply(echo_u8, v).unwrap()),
                criterion::BatchSize::PerIteration,
            )
        });
        let floats = vec![1.5f64; len / 8];
        g.bench_function(BenchmarkId::new("apply_vec_f64", name), |b| {
            b.iter_batched(
                || floats.clone(),
                |v| black_box(pool.apply(echo_f64, v).unwrap()),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, payload_round_trip);
criterion_main!(benches);
