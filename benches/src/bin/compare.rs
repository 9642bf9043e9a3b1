//! The comparison with Python's `multiprocessing`, in one command:
//!
//! ```text
//! cargo run --release -p forkpool-benches --bin compare [-- --quick] [-- --only apply]
//! ```
//!
//! For each workload it times the forkpool side here, the machine's ceiling
//! for the same work (also here, in the same run), and the Python side by
//! running `benches/python/<workload>.py` (which prints one JSON line), then
//! prints a table: workload, Python time, forkpool time, the ratio, and
//! forkpool as a fraction of the ceiling.
//!
//! Options: see `--help` (`--quick`, `--only <text>`, `--reps <n>`,
//! `--python <exe>`, `--no-python`).
//!
//! The Python side is the system's `python3` if it has numpy, else a virtual
//! environment under `target/` that the `numpy-env` crate sets up on first
//! use; with no Python at all the runner stops and says what to install
//! (`--no-python` runs the Rust side alone).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use comfy_table::{CellAlignment, Table, presets};

use forkpool::Pool;
use forkpool_benches::arrays::{
    BigArrayCeilings, Counter, Counters, PassArray, WarmFill, cold_fill,
};
use forkpool_benches::ceiling::{
    PingPong, PipeSink, faulted_buffer, fork_exit_wait, memcpy, memset,
};
use forkpool_benches::experiments::{self, fill_nontemporal, fill_regular};
use forkpool_benches::random;
use forkpool_benches::sched::{self, Before, Kind, Mode};
use forkpool_benches::startup::{Ballast, time_start};
use forkpool_benches::tasks::{
    Bytes, Chunks, RayonMap, time_apply, time_map, time_payload, time_payload_bytes,
    time_round_trip_buffer, time_round_trip_bytes, time_round_trip_floats,
};
use forkpool_benches::timing::{OneCpu, sample};

const MIB: usize = 1 << 20;

/// forkpool against Python's multiprocessing, and both against the
/// machine's ceiling, workload by workload; prints a markdown table.
#[derive(Debug, Parser)]
#[command(name = "compare")]
struct Options {
    /// Small sizes and few runs (a smoke test of the whole chain).
    #[arg(long)]
    quick: bool,
    /// Only the workloads whose id contains this text (apply, map, pass,
    /// fill-warm, fill-cold, random, counter, start).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Timed runs per measurement [default: 5, 3 for the slow ones].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    reps: Option<u16>,
    /// The Python to compare with [default: python3]; numpy is set up for
    /// it under target/ on first use if it lacks it.
    #[arg(long, value_name = "EXE", env = "FORKPOOL_PYTHON")]
    python: Option<OsString>,
    /// The Rust side only: no Python column.
    #[arg(long, conflicts_with = "python")]
    no_python: bool,
    /// Scheduling rows: tasks sleep instead of spinning (on a machine whose
    /// cores others keep busy: measures the schedule).
    #[arg(long)]
    sched_sleep: bool,
    /// Worker processes (and threads of the ceilings) on both sides.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    processes: u16,
    /// pid-fill's array as ROWSxCOLS [default: 2000x32000; the notes'
    /// full size, 25.6 GB: 10000x320000].
    #[arg(long, value_name = "ROWSxCOLS", value_parser = parse_shape)]
    pid_fill_size: Option<(usize, usize)>,
}

/// `ROWSxCOLS`, both at least 1.
fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?} is not ROWSxCOLS (for example 10000x320000)");
    let (r, c) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let r: usize = r.trim().parse().map_err(|_| bad())?;
    let c: usize = c.trim().parse().map_err(|_| bad())?;
    if r == 0 || c == 0 {
        return Err(bad());
    }
    Ok((r, c))
}

/// Sizes of the workloads: the full run, or `--quick`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    map_small: u64,
    map_large: u64,
    apply_rust: u32,
    apply_python: u32,
    pass_mib: usize,
    fill_mib: usize,
    random_mib: usize,
    /// pid-fill: rows x cols (the demo's default: 2000 x 32000).
    pid_fill: (usize, usize),
    /// Generation per core: rows x cols drawn into one reused row.
    rng: (usize, usize),
    counter_rust: u64,
    counter_python: u64,
    ballast_mib: usize,
    reps: usize,
    slow_reps: usize,
    /// Worker processes on both sides (`--processes`).
    processes: usize,
}

impl Sizes {
    fn new(o: &Options) -> Sizes {
        let mut s = if o.quick {
            Sizes {
                map_small: 10_000,
                map_large: 100_000,
                apply_rust: 2_000,
                apply_python: 200,
                pass_mib: 16,
                fill_mib: 32,
                random_mib: 64,
                pid_fill: (200, 32_000),
                rng: (200, 32_000),
                counter_rust: 100_000,
                counter_python: 10_000,
                ballast_mib: 64,
                reps: 2,
                slow_reps: 1,
                processes: 2,
            }
        } else {
            Sizes {
                map_small: 100_000,
                map_large: 1_000_000,
                apply_rust: 20_000,
                apply_python: 2_000,
                pass_mib: 256,
                fill_mib: 256,
                random_mib: 1024,
                pid_fill: (2000, 32_000),
                rng: (2000, 32_000),
                counter_rust: 2_000_000,
                counter_python: 100_000,
                ballast_mib: 1024,
                reps: 5,
                slow_reps: 3,
                processes: 2,
            }
        };
        if let Some(r) = o.reps {
            s.reps = r.into();
            s.slow_reps = r.into();
        }
        s.processes = o.processes.into();
        if let Some(shape) = o.pid_fill_size {
            s.pid_fill = shape;
        }
        s
    }
}

/// Where the Python scripts are: `benches/python` of the checkout this was
/// built in, or, when the binary runs elsewhere (carried to another
/// machine), `benches/python` under the current directory.
fn scripts_dir() -> PathBuf {
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/python"));
    let here = PathBuf::from("benches/python");
    if !built.is_dir() && here.is_dir() {
        here
    } else {
        built
    }
}

/// The Python side: an interpreter with numpy, and the scripts.
#[derive(Debug)]
struct Python {
    python: numpy_env::Python,
    dir: PathBuf,
    /// Passed to every script as `--processes` unless its arguments name it.
    processes: usize,
}

impl Python {
    /// The Python to compare with: `exe` (or `python3`) with numpy, set up
    /// under `target/` if it lacks it. Exits, saying what to install, if
    /// there is none.
    fn find(exe: Option<&OsString>) -> Python {
        let found = match exe {
            Some(exe) => numpy_env::python_from(exe),
            None => numpy_env::python().cloned(),
        };
        match found {
            Ok(python) => Python {
                python,
                dir: scripts_dir(),
                processes: 2,
            },
            Err(e) => {
                eprintln!("compare: {e} (or pass --no-python to run the Rust side alone)");
                std::process::exit(1);
            }
        }
    }

    /// Runs `script` with `args`; the median seconds it reports.
    fn run(&self, script: &str, args: &[String]) -> Result<f64, String> {
        let v = self.run_json(script, args)?;
        v["seconds"]
            .as_f64()
            .ok_or_else(|| format!("{script}: no \"seconds\" in {v}"))
    }

    /// Runs `script` with `args`; the JSON line it prints.
    fn run_json(&self, script: &str, args: &[String]) -> Result<serde_json::Value, String> {
        let out = self
            .python
            .command()
            .arg(self.dir.join(script))
            .args(args)
            .args(
                (!args.iter().any(|a| a == "--processes"))
                    .then(|| ["--processes".to_string(), self.processes.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("{script}: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            return Err(format!(
                "{script} failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("{script}: bad output {line:?}: {e}"))
    }
}

/// One line of the scheduling table: efficiencies (ideal / wall).
#[derive(Debug)]
struct SchedRow {
    workload: String,
    before: Before,
    mode: Mode,
    python: Result<f64, String>,
    forkpool: f64,
    /// Wall time of the forkpool job, seconds.
    forkpool_wall: f64,
    raw_fork: f64,
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    id: &'static str,
    workload: String,
    python: Result<f64, String>,
    forkpool: f64,
    ceiling: Option<(String, f64)>,
}

/// The runner: options, sizes, the Python side, the rows so far.
struct Runner {
    opts: Options,
    sizes: Sizes,
    python: Option<Python>,
    rows: Vec<Row>,
    sched: Vec<SchedRow>,
    /// Measurements that explain a row rather than make one.
    notes: Vec<String>,
    /// The lazily allocated random fill (an experiment), in seconds.
    lazy_random: Option<f64>,
}

/// Runs `f` with this process's stdout sent to `/dev/null` (a demo's
/// phase tables), and puts stdout back afterwards.
fn silenced<R>(f: impl FnOnce() -> R) -> R {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let saved = nix::unistd::dup(std::io::stdout()).expect("dup stdout");
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    nix::unistd::dup2_stdout(&null).expect("stdout to /dev/null");
    let out = f();
    let _ = std::io::stdout().flush();
    nix::unistd::dup2_stdout(&saved).expect("stdout back");
    out
}

fn fmt_bytes(len: usize) -> String {
    match len {
        l if l >= MIB => format!("{} MiB", l / MIB),
        l => format!("{} KiB", l / 1024),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

impl Runner {
    fn wants(&self, id: &str) -> bool {
        self.opts.only.as_deref().is_none_or(|o| id.contains(o))
    }

    fn python(&self, script: &str, args: &[String]) -> Result<f64, String> {
        match &self.python {
            None => Err("no python".into()),
            Some(p) => p.run(script, args),
        }
    }

    /// [`python`](Self::python), the whole JSON line.
    fn python_json(&self, script: &str, args: &[String]) -> Result<serde_json::Value, String> {
        match &self.python {
            None => Err("no python".into()),
            Some(p) => p.run_json(script, args),
        }
    }

    /// Records a row and prints it as it comes.
    fn push(&mut self, row: Row) {
        eprintln!(
            "  {:<44} python {:>10}  forkpool {:>10}  ceiling {:>10}",
            row.workload,
            row.python
                .as_ref()
                .map_or_else(|_| "-".into(), |&p| fmt_time(p)),
            fmt_time(row.forkpool),
            row.ceiling.as_ref().map_or("-".into(), |c| fmt_time(c.1)),
        );
        if let Err(e) = &row.python
            && e != "no python"
        {
            eprintln!("    python: {e}");
        }
        self.rows.push(row);
    }

    fn map_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        for (id, n, chunks) in [
            ("map-chunksize-1", z.map_small, Chunks::Size(1)),
            ("map-1M-default", z.map_large, Chunks::Default),
        ] {
            if !self.wants(id) {
                continue;
            }
            let items: Vec<u64> = (0..n).collect();
            let rayon = RayonMap::new(procs);
            let ceiling = sample(z.reps, || rayon.time_map(&items, chunks)).median();
            drop(rayon);
            let pool = Pool::new(procs).expect("pool");
            let ours = sample(z.reps, || time_map(&pool, &items, chunks)).median();
            drop(pool);
            let python = self.python(
                "map_tasks.py",
                &[
                    s("--n"),
                    s(n),
                    s("--chunksize"),
                    chunks.label(),
                    s("--reps"),
                    s(z.reps),
                ],
            );
            self.push(Row {
                id,
                workload: format!(
                    "map {n} tasks, chunksize {}, {procs} processes",
                    chunks.label()
                ),
                python,
                forkpool: secs(ours),
                ceiling: Some((format!("rayon, {procs} threads"), secs(ceiling))),
            });
        }
    }

    fn apply_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        for one_cpu in [false, true] {
            let id = if one_cpu { "apply-cpu0" } else { "apply" };
            if !self.wants(id) {
                continue;
            }
            let pin = one_cpu.then(|| OneCpu::pin().expect("pin to CPU 0"));
            let ping = PingPong::start();
            let ceiling = sample(z.reps, || {
                let start = std::time::Instant::now();
                for _ in 0..z.apply_rust {
                    ping.round_trip();
                }
                start.elapsed() / z.apply_rust
            })
            .median();
            drop(ping);
            if !one_cpu {
                let spin = PingPong::start_spinning();
                let polled = sample(z.reps, || {
                    let start = std::time::Instant::now();
                    for _ in 0..z.apply_rust {
                        spin.round_trip();
                    }
                    start.elapsed() / z.apply_rust
                })
                .median();
                drop(spin);
                self.notes.push(format!(
                    "raw pipe ping-pong on 2 CPUs with both ends busy-polling (no sleep, \
                     no wake-up): {}",
                    fmt_time(secs(polled))
                ));
            }
            let pool = Pool::new(procs).expect("pool");
            let ours = sample(z.reps, || time_apply(&pool, z.apply_rust)).median();
            drop(pool);
            drop(pin);
            let mut args = vec![s("--n"), s(z.apply_python), s("--reps"), s(z.reps)];
            if one_cpu {
                args.push(s("--cpu0"));
            }
            let python = self.python("apply_latency.py", &args);
            let workload = if one_cpu {
                "apply round trip, all on CPU 0"
            } else {
                "apply round trip, 2 CPUs"
            };
            self.push(Row {
                id,
                workload: workload.into(),
                python,
                forkpool: secs(ours),
                ceiling: Some(("raw pipe ping-pong".into(), secs(ceiling))),
            });
        }
    }

    /// A value sent to a worker by `apply` and returned, at 1 KiB, 1 MiB and
    /// 64 MiB: `Vec<u8>` against Python's `bytes`, `Vec<f64>` against a
    /// numpy float64 array; the ceiling is a one-thread `memcpy` of the same
    /// size into memory already faulted in, and the raw pipes there and back
    /// go in the notes.
    fn round_trip_rows(&mut self) {
        let procs = self.sizes.processes;
        const CASES: [(&str, &str, usize, u32); 6] = [
            ("round-trip-bytes-1k", "bytes", 1 << 10, 2000),
            ("round-trip-numpy-1k", "numpy", 1 << 10, 2000),
            ("round-trip-bytes-1m", "bytes", 1 << 20, 100),
            ("round-trip-numpy-1m", "numpy", 1 << 20, 100),
            ("round-trip-bytes-64m", "bytes", 64 << 20, 1),
            ("round-trip-numpy-64m", "numpy", 64 << 20, 1),
        ];
        if !CASES.iter().any(|c| self.wants(c.0)) {
            return;
        }
        let pool = Pool::new(procs).expect("pool");
        for (id, kind, len, n) in CASES {
            if !self.wants(id) {
                continue;
            }
            let (rust, py) = match kind {
                "bytes" => ("Vec<u8>", "bytes"),
                _ => ("Vec<f64>", "numpy float64"),
            };
            let what = format!("{rust} / {py}");
            self.round_trip_row(id, &what, kind, len, n, |n| match kind {
                "bytes" => time_round_trip_bytes(&pool, len, n),
                _ => time_round_trip_floats(&pool, len, n),
            });
        }
    }

    /// One round-trip row: `ours(n)` timed (`n` calls a run, a tenth with
    /// `--quick`), Python's `round_trip.py` with `kind` and the same counts,
    /// and a one-thread `memcpy` of `len` bytes into memory already faulted
    /// in as the ceiling.
    fn round_trip_row(
        &mut self,
        id: &'static str,
        what: &str,
        kind: &str,
        len: usize,
        n: u32,
        mut ours: impl FnMut(u32) -> Duration,
    ) {
        let n = if self.opts.quick { n.div_ceil(10) } else { n };
        let reps = if len > MIB {
            self.sizes.slow_reps
        } else {
            self.sizes.reps
        };
        let src = faulted_buffer(len);
        let mut dst = faulted_buffer(len);
        let ceiling = sample(reps.max(3), || memcpy(&mut dst, &src, 1)).median();
        drop((src, dst));
        let ours = sample(reps, || ours(n)).median();
        let args = vec![
            s("--bytes"),
            s(len),
            s("--kind"),
            s(kind),
            s("--n"),
            s(n),
            s("--reps"),
            s(reps),
        ];
        let python = self.python("round_trip.py", &args);
        self.push(Row {
            id,
            workload: format!("apply round trip, {} ({what})", fmt_bytes(len)),
            python,
            forkpool: secs(ours),
            ceiling: Some((
                format!("memcpy {}, 1 thread", fmt_bytes(len)),
                secs(ceiling),
            )),
        });
    }

    /// `apply` round trips of a `forkpool::Buffer<f64>` (out of band: a
    /// sealed memory file whose descriptor travels beside the task) beside
    /// Python's `Pool.apply` of a numpy float64 array (its only way to pass
    /// an array by value) and a one-thread `memcpy` of the same size: the
    /// buffer made before the clock starts, as the other round trips'
    /// values are, and at 64 MiB also made inside the clock from a `Vec`
    /// (the one copy by value costs).
    fn buffer_round_trip_rows(&mut self) {
        let procs = self.sizes.processes;
        const CASES: [(&str, usize, u32, bool); 4] = [
            ("round-trip-buffer-1k", 1 << 10, 2000, false),
            ("round-trip-buffer-1m", 1 << 20, 100, false),
            ("round-trip-buffer-64m", 64 << 20, 1, false),
            ("round-trip-buffer-from-vec-64m", 64 << 20, 1, true),
        ];
        if !CASES.iter().any(|c| self.wants(c.0)) {
            return;
        }
        let pool = Pool::new(procs).expect("pool");
        for (id, len, n, from_vec) in CASES {
            if !self.wants(id) {
                continue;
            }
            let made = if from_vec {
                "made from a Vec<f64> in the clock"
            } else {
                "made before"
            };
            let what = format!("Buffer<f64>, {made} / numpy float64");
            self.round_trip_row(id, &what, "numpy", len, n, |n| {
                time_round_trip_buffer(&pool, len, n, from_vec)
            });
        }
    }

    fn pass_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        if !self.wants("pass-value") && !self.wants("pass-shared") {
            return;
        }
        let tasks = 4;
        let bench = PassArray::new(z.pass_mib * MIB, procs, tasks);
        let common = |mode: &str| {
            vec![
                s("--mib"),
                s(z.pass_mib),
                s("--tasks"),
                s(tasks),
                s("--mode"),
                s(mode),
                s("--reps"),
                s(z.slow_reps),
            ]
        };
        if self.wants("pass-value") {
            let sink = PipeSink::start();
            let payload = faulted_buffer(bench.bytes());
            let ceiling = sample(z.slow_reps, || {
                let start = std::time::Instant::now();
                for _ in 0..tasks {
                    sink.send(&payload);
                }
                start.elapsed()
            })
            .median();
            drop(sink);
            let big = PipeSink::start_with_pipe_size(Some(MIB));
            let big_pipe = sample(z.slow_reps, || {
                let start = std::time::Instant::now();
                for _ in 0..tasks {
                    big.send(&payload);
                }
                start.elapsed()
            })
            .median();
            drop((big, payload));
            self.notes.push(format!(
                "raw pipe, {tasks} x {} MiB: {} with the default 64 KiB pipe, {} with a 1 MiB \
                 pipe (F_SETPIPE_SZ)",
                z.pass_mib,
                fmt_time(secs(ceiling)),
                fmt_time(secs(big_pipe))
            ));
            {
                let pool = Pool::new(procs).expect("pool");
                let size = 64 * MIB;
                let as_vec = sample(z.slow_reps, || time_payload(&pool, vec![1u8; size])).median();
                let as_bytes = sample(z.slow_reps, || {
                    time_payload_bytes(&pool, Bytes(vec![1u8; size]))
                })
                .median();
                self.notes.push(format!(
                    "apply with a 64 MiB argument: {} as a Vec<u8> (serde: one call per byte), \
                     {} as Bytes (serde_bytes-style: one copy)",
                    fmt_time(secs(as_vec)),
                    fmt_time(secs(as_bytes))
                ));
            }
            let ours = sample(z.slow_reps, || bench.run_by_value()).median();
            let python = self.python("pass_array.py", &common("value"));
            self.push(Row {
                id: "pass-value",
                workload: format!("{} MiB array to {tasks} tasks, by value", z.pass_mib),
                python,
                forkpool: secs(ours),
                ceiling: Some((
                    format!("raw pipe, {tasks} x {} MiB", z.pass_mib),
                    secs(ceiling),
                )),
            });
        }
        if self.wants("pass-shared") {
            let ceiling = sample(z.reps, || bench.time_threads_sum(procs)).median();
            let ours = sample(z.reps, || bench.run_shared()).median();
            let mut args = common("shared");
            let last = args.len() - 1;
            args[last] = s(z.reps);
            let python = self.python("pass_array.py", &args);
            self.push(Row {
                id: "pass-shared",
                workload: format!("{} MiB array to {tasks} tasks, shared", z.pass_mib),
                python,
                forkpool: secs(ours),
                ceiling: Some((format!("sum on {procs} threads"), secs(ceiling))),
            });
        }
    }

    fn fill_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        let bytes = z.fill_mib * MIB;
        for (id, processes, mode) in [
            ("fill-warm-1", 1usize, "warm"),
            ("fill-warm-2", procs, "warm"),
            ("fill-cold-1", 1, "cold"),
            ("fill-cold-2", procs, "cold"),
        ] {
            if !self.wants(id) {
                continue;
            }
            let ceiling = {
                let mut buf = faulted_buffer(bytes);
                sample(z.reps, || memset(&mut buf, 7, processes)).median()
            };
            if id == "fill-warm-1" {
                let mut buf = vec![1f64; bytes / 8];
                let regular = sample(z.reps, || fill_regular(&mut buf, 2.0)).median();
                let streaming = sample(z.reps, || fill_nontemporal(&mut buf, 3.0)).median();
                self.notes.push(format!(
                    "fill {} MiB on 1 thread, mapped private memory: ordinary stores \
                     (slice::fill) {}, non-temporal stores {}, glibc memset {}",
                    z.fill_mib,
                    fmt_time(secs(regular)),
                    fmt_time(secs(streaming)),
                    fmt_time(secs(ceiling))
                ));
            }
            let ours = if mode == "warm" {
                let mut warm = WarmFill::new(bytes, processes);
                sample(z.reps, || warm.run()).median()
            } else {
                sample(z.reps, || cold_fill(bytes, processes)).median()
            };
            let python = self.python(
                "shared_fill.py",
                &[
                    s("--mib"),
                    s(z.fill_mib),
                    s("--processes"),
                    s(processes),
                    s("--mode"),
                    s(mode),
                    s("--reps"),
                    s(z.reps),
                ],
            );
            let what = if mode == "warm" {
                "workers have mapped it"
            } else {
                "create + first fill"
            };
            let plural = if processes == 1 { "" } else { "es" };
            self.push(Row {
                id,
                workload: format!(
                    "fill {} MiB shared, {processes} process{plural}, {what}",
                    z.fill_mib
                ),
                python,
                forkpool: secs(ours),
                ceiling: Some((format!("memset, {processes} thread(s)"), secs(ceiling))),
            });
        }
    }

    fn random_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        let bytes = z.random_mib * MIB;
        let mib = z.random_mib;
        let seed = 42;
        let reps = z.slow_reps;
        let generation_only = |threads: usize| {
            let mut mapped = vec![1f64; bytes / 8];
            let took = sample(reps, || {
                random::threads_on_mapped(&mut mapped, threads, seed)
            });
            (
                format!("generation only, {threads} thread(s)"),
                secs(took.median()),
            )
        };
        for (id, processes, existing) in [
            ("random-serial", 0usize, false),
            ("random-new-2", procs, false),
            ("random-existing-1", 1, true),
            ("random-existing-2", procs, true),
        ] {
            if !self.wants(id) {
                continue;
            }
            let (ours, ceiling, workload) = match (processes, existing) {
                (0, _) => (
                    sample(reps, || random::serial(bytes, seed).0).median(),
                    generation_only(1),
                    format!("random fill {mib} MiB: new private array, serial"),
                ),
                (n, false) => {
                    let lazy = sample(reps, || experiments::random_parallel_lazy(bytes, n, seed).0)
                        .median();
                    self.notes.push(format!(
                        "random fill {mib} MiB, {n} processes, into a shared array not \
                         reserved up front (each worker allocates its own rows; experiment): {}",
                        fmt_time(secs(lazy))
                    ));
                    self.lazy_random = Some(secs(lazy));
                    let threads = sample(reps, || random::threads_on_new(bytes, n, seed)).median();
                    (
                        sample(reps, || random::parallel(bytes, n, seed).0).median(),
                        (
                            format!("new private array + generation, {n} threads"),
                            secs(threads),
                        ),
                        format!("random fill {mib} MiB: new shared array, {n} processes"),
                    )
                }
                (n, true) => (
                    sample(reps, || random::existing(bytes, n, seed)).median(),
                    generation_only(n),
                    format!(
                        "random fill {mib} MiB: existing shared array, {n} fresh process{}",
                        if n == 1 { "" } else { "es" }
                    ),
                ),
            };
            let mut args = vec![
                s("--mib"),
                s(mib),
                s("--processes"),
                s(processes),
                s("--reps"),
                s(reps),
            ];
            if existing {
                args.push(s("--existing"));
            }
            let python = self.python("random_fill.py", &args);
            self.push(Row {
                id,
                workload,
                python,
                forkpool: secs(ours),
                ceiling: Some(ceiling),
            });
        }
    }

    /// Random generation per core: numpy's PCG64 `random(out=row)` against
    /// the demo's Philox (and its previous ChaCha8), one thread each, into
    /// one reused row.
    fn rng_rows(&mut self) {
        let id = "rng-per-core";
        if !self.wants(id) {
            return;
        }
        let z = self.sizes;
        let (rows, cols) = z.rng;
        // Rust and Python alternate, three rounds of `reps` runs each: on a
        // loaded machine, minutes apart, the two sides would meet different
        // loads. Generation is bound by the CPU alone, so besides the
        // medians the fastest run of each (the least disturbed) is shown.
        let (mut philox, mut chacha, mut numpy) = (Vec::new(), Vec::new(), Vec::new());
        let mut python_error = None;
        let args = [
            s("--rows"),
            s(rows),
            s("--cols"),
            s(cols),
            s("--reps"),
            s(z.reps),
        ];
        for _ in 0..3 {
            for (kernel, runs) in [
                (random::fill_row as fn(u64, u64, &mut [f64]), &mut philox),
                (random::chacha8_row, &mut chacha),
            ] {
                let sample = sample(z.reps, || {
                    random::generation_per_core(kernel, rows, cols, 42)
                });
                runs.push((secs(sample.median()), secs(sample.min())));
            }
            match self.python_json("rng_per_core.py", &args) {
                Ok(v) => {
                    let all: Vec<f64> = v["runs"]
                        .as_array()
                        .map(|r| r.iter().filter_map(serde_json::Value::as_f64).collect())
                        .unwrap_or_default();
                    if let (Some(median), Some(min)) =
                        (v["seconds"].as_f64(), all.into_iter().reduce(f64::min))
                    {
                        numpy.push((median, min));
                    }
                }
                Err(e) => python_error = Some(e),
            }
        }
        let median_min = |runs: &[(f64, f64)]| {
            let mut medians: Vec<f64> = runs.iter().map(|r| r.0).collect();
            medians.sort_by(f64::total_cmp);
            let min = runs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            (medians[medians.len() / 2], min)
        };
        let doubles = (rows * cols) as f64;
        let ns = |(median, min): (f64, f64)| {
            format!(
                "{:.2} (fastest {:.2})",
                median / doubles * 1e9,
                min / doubles * 1e9
            )
        };
        let (philox, chacha) = (median_min(&philox), median_min(&chacha));
        let numpy = (!numpy.is_empty()).then(|| median_min(&numpy));
        self.notes.push(format!(
            "random generation, 1 thread, ns per double, medians of 3 alternating rounds: \
             Philox4x32-10 ({}) {}, ChaCha8 (rand_chacha, the previous kernel) {}{}",
            demos::philox::Simd::best().name(),
            ns(philox),
            ns(chacha),
            numpy.map_or(String::new(), |p| format!(
                ", numpy PCG64 random(out=row) {}",
                ns(p)
            )),
        ));
        let python = match (numpy, python_error) {
            (Some(p), _) => Ok(p.0),
            (None, Some(e)) => Err(e),
            (None, None) => Err("rng_per_core.py: no runs".into()),
        };
        let philox = philox.0;
        self.push(Row {
            id,
            workload: format!(
                "random generation {rows} x {cols} doubles, 1 thread (Py: PCG64, Rust: Philox)"
            ),
            python,
            forkpool: philox,
            // The previous kernel is in the notes; a generator has no
            // machine ceiling worth the name here.
            ceiling: None,
        });
    }

    /// The notes' pid-fill program end to end (create -> verified): the
    /// `pid-fill` demo, its output silenced, against `python/pid_fill.py`;
    /// then each phase of both sides beside the machine's limits for the
    /// same bytes, measured between the demo's runs
    /// ([`BigArrayCeilings`]).
    fn pid_fill_rows(&mut self) {
        let procs = self.sizes.processes;
        let id = "pid-fill";
        if !self.wants(id) {
            return;
        }
        let z = self.sizes;
        let (rows, cols) = z.pid_fill;
        let args = demos::pid_fill::Args::new(rows, cols, procs);
        let mut runs = Vec::new();
        let mut ceilings = Vec::new();
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let py_args = [
            s("--rows"),
            s(rows),
            s("--cols"),
            s(cols),
            s("--processes"),
            s(procs),
            s("--reps"),
            s(z.slow_reps),
        ];
        // Three rounds, forkpool then Python, so that on a machine whose
        // load drifts both sides meet the same load: forkpool's runs (each
        // followed by the limits; one untimed warm-up first), then the
        // Python script's (its own warm-up, then its runs).
        let mut py_rounds = Vec::new();
        let mut python_error = None;
        let mut round_ratios = Vec::new();
        silenced(|| demos::pid_fill::run_timed(&args)).expect("the pid-fill demo");
        for _ in 0..3 {
            let first = runs.len();
            for _ in 0..z.slow_reps {
                let timings =
                    silenced(|| demos::pid_fill::run_timed(&args)).expect("the pid-fill demo");
                runs.push(timings);
                ceilings.push(BigArrayCeilings::measure(rows, cols, procs));
            }
            let ours_now = median(runs[first..].iter().map(|t| secs(t.total)).collect());
            match self.python_json("pid_fill.py", &py_args) {
                Ok(v) => {
                    if let Some(py) = v["seconds"].as_f64() {
                        round_ratios.push(py / ours_now);
                    }
                    py_rounds.push(v);
                }
                Err(e) => python_error = Some(e),
            }
        }
        let ours = median(runs.iter().map(|t| secs(t.total)).collect());
        let py_total = (!py_rounds.is_empty()).then(|| {
            median(
                py_rounds
                    .iter()
                    .flat_map(|v| v["runs"].as_array().cloned().unwrap_or_default())
                    .filter_map(|x| x.as_f64())
                    .collect(),
            )
        });
        let py_phase = |name: &str| {
            let xs: Vec<f64> = py_rounds
                .iter()
                .filter_map(|v| v["phases"][name].as_f64())
                .collect();
            if xs.is_empty() {
                "-".into()
            } else {
                fmt_time(median(xs))
            }
        };
        let python: Result<f64, String> = match (py_total, python_error) {
            (Some(p), _) => Ok(p),
            (None, Some(e)) => Err(e),
            (None, None) => Err("pid_fill.py: no runs".into()),
        };
        let bytes = rows * cols * 8;
        let limit = |f: fn(&BigArrayCeilings) -> Duration| {
            median(ceilings.iter().map(|c| secs(f(c))).collect())
        };
        let rate = |t: f64| {
            format!(
                "{} ({:.1} GiB/s)",
                fmt_time(t),
                bytes as f64 / t / (1u64 << 30) as f64
            )
        };
        let mut t = format!(
            "pid-fill {rows} x {cols} ({}), {procs} processes, phases (medians of {} runs \
             each, in 3 alternating rounds; limits measured between forkpool's runs):\n\n\
             | phase | Python | forkpool | the machine's limit |\n|---|---:|---:|---|\n",
            fmt_bytes(bytes),
            runs.len(),
        );
        let limits = [
            format!(
                "populate new pages {}; populate and fill (`SharedArray::full`) {}",
                rate(limit(|c| c.populate)),
                rate(limit(|c| c.populate_filled))
            ),
            format!(
                "memset, populated, {procs} threads {}",
                rate(limit(|c| c.memset))
            ),
            String::new(),
            format!(
                "{procs} forked children mapping the pages {}; already forked, checking and writing \
                 them (no pool) {}; memset {}",
                fmt_time(limit(|c| c.map_in_children)),
                fmt_time(limit(|c| c.check_write_in_children)),
                fmt_time(limit(|c| c.memset))
            ),
            format!("read, {procs} threads {}", rate(limit(|c| c.read))),
        ];
        let phases: Vec<_> = runs.iter().map(|r| r.phases()).collect();
        for (i, limit) in limits.iter().enumerate() {
            let name = phases[0][i].0;
            let ours = median(phases.iter().map(|p| secs(p[i].1)).collect());
            let ours = if ours == 0.0 {
                "in create".to_string()
            } else {
                fmt_time(ours)
            };
            let _ = writeln!(t, "| {name} | {} | {ours} | {limit} |", py_phase(name));
        }
        let _ = write!(
            t,
            "| create -> verified | {} | {} | Python / forkpool by round: {} |",
            python.as_ref().map_or("-".into(), |&p| fmt_time(p)),
            fmt_time(ours),
            round_ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // The same work with nothing but the machine in the way: create and
        // fill, the children's check-and-write, a read. The best ratio to
        // Python that this order of work allows here.
        let floor = median(
            ceilings
                .iter()
                .map(|c| secs(c.populate_filled + c.check_write_in_children + c.read))
                .collect(),
        );
        let _ = write!(
            t,
            "\n| the limits' sum (populate and fill + children check and write + read) | | {} | \
             Python / the limits' sum: {} |",
            fmt_time(floor),
            python
                .as_ref()
                .map_or("-".into(), |&p| format!("{:.2}x", p / floor))
        );
        self.notes.push(t);
        self.push(Row {
            id,
            workload: format!("pid-fill {rows} x {cols}, {procs} processes, create -> verified"),
            python,
            forkpool: ours,
            ceiling: None,
        });
    }

    fn counter_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        if !self.wants("counter-locked") && !self.wants("counter-lockfree") {
            return;
        }
        let counters = Counters::new(procs);
        let ops = (z.counter_rust * counters.processes() as u64) as f64;
        let per_op =
            |counter| secs(sample(z.reps, || counters.run(counter, z.counter_rust)).median()) / ops;
        let ceiling = per_op(Counter::OwnSlot);
        for (id, counter, mode, what) in [
            (
                "counter-locked",
                Counter::Locked,
                "locked",
                "counter, lock + add + unlock (Value(lock=True))",
            ),
            (
                "counter-lockfree",
                Counter::Atomic,
                "lockfree",
                "counter, lock-free (Py: own slot each; Rust: one atomic)",
            ),
        ] {
            if !self.wants(id) {
                continue;
            }
            let ours = per_op(counter);
            let python = self.python(
                "counters.py",
                &[
                    s("--n"),
                    s(z.counter_python),
                    s("--mode"),
                    s(mode),
                    s("--reps"),
                    s(z.reps),
                ],
            );
            self.push(Row {
                id,
                workload: format!("{what}, {procs} processes, per increment"),
                python,
                forkpool: ours,
                ceiling: Some(("own cache line each, atomic".into(), ceiling)),
            });
        }
    }

    fn startup_rows(&mut self) {
        let z = self.sizes;
        let workers = 4;
        for (id, mib, kind) in [
            ("start", 0usize, "private"),
            ("start-private", z.ballast_mib, "private"),
            ("start-shared", z.ballast_mib, "shared"),
        ] {
            if !self.wants(id) {
                continue;
            }
            let ballast = if kind == "private" {
                Ballast::private(mib * MIB)
            } else {
                Ballast::shared(mib * MIB)
            };
            let ceiling = sample(z.reps * 2, || fork_exit_wait(workers)).median();
            let ours = sample(z.reps * 2, || time_start(workers).1).median();
            drop(ballast);
            let python = self.python(
                "startup.py",
                &[
                    s("--processes"),
                    s(workers),
                    s("--ballast-mib"),
                    s(mib),
                    s("--ballast"),
                    s(kind),
                    s("--reps"),
                    s(z.reps * 2),
                ],
            );
            let holding = if mib == 0 {
                String::new()
            } else {
                format!(", parent holds {mib} MiB {kind}")
            };
            self.push(Row {
                id,
                workload: format!("Pool({workers}) start + close + join{holding}"),
                python,
                forkpool: secs(ours),
                ceiling: Some(("4 x fork + exit + wait".into(), secs(ceiling))),
            });
        }
    }

    /// Scheduling (issue 9): spin-on-clock task lists on a fresh pool and
    /// after other work, `map` and `imap_unordered(chunksize 1)`, as
    /// efficiency against the ideal, beside Python and a raw-fork ceiling.
    fn sched_rows(&mut self) {
        let procs = self.sizes.processes;
        let z = self.sizes;
        let scale = if self.opts.quick { 0.1 } else { 1.0 };
        let kind = if self.opts.sched_sleep {
            Kind::Sleep
        } else {
            Kind::Spin
        };
        for w in sched::workloads(scale) {
            let id = format!("sched-{}", w.id);
            if !self.wants(&id) {
                continue;
            }
            let file = std::env::temp_dir().join(format!(
                "forkpool-sched-{}-{}.json",
                w.id,
                std::process::id()
            ));
            std::fs::write(&file, serde_json::to_string(&w.durations).expect("json"))
                .expect("writing the durations for Python");
            let raw = sample(z.slow_reps, || sched::time_raw_fork(&w, kind, procs)).median();
            let raw_eff = w.efficiency(procs, raw);
            for before in Before::ALL {
                for mode in Mode::ALL {
                    let ours = sample(z.slow_reps, || {
                        sched::time_forkpool(&w, kind, procs, before, mode)
                    })
                    .median();
                    let python = self
                        .python(
                            "sched.py",
                            &[
                                s("--durations"),
                                file.display().to_string(),
                                s("--mode"),
                                s(mode.arg()),
                                s("--before"),
                                s(before.arg()),
                                s("--reps"),
                                s(z.slow_reps),
                                s("--kind"),
                                s(kind.what()),
                            ],
                        )
                        .map(|secs| w.efficiency(procs, Duration::from_secs_f64(secs)));
                    let row = SchedRow {
                        workload: w.what.to_string(),
                        before,
                        mode,
                        python,
                        forkpool: w.efficiency(procs, ours),
                        forkpool_wall: secs(ours),
                        raw_fork: raw_eff,
                    };
                    eprintln!(
                        "  {:<44} {:<34} {:<15} python {:>5}  forkpool {:.2}  raw fork {:.2}",
                        row.workload,
                        before.what(),
                        mode.arg(),
                        row.python
                            .as_ref()
                            .map_or("-".into(), |p| format!("{p:.2}")),
                        row.forkpool,
                        row.raw_fork
                    );
                    self.sched.push(row);
                }
            }
            let _ = std::fs::remove_file(&file);
        }
    }

    fn sched_table(&self) -> String {
        let procs = self.sizes.processes;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Scheduling, {procs} processes, tasks {}: efficiency = max(sum of durations / processes, \
             longest task) / wall time (1.00 is ideal); raw fork = the same list dealt round \
             robin to plainly forked processes",
            if self.opts.sched_sleep {
                "sleep"
            } else {
                "spin on the clock"
            }
        );
        let _ = writeln!(t);
        let rows = self.sched.iter().map(|r| {
            let fresh = self
                .sched
                .iter()
                .find(|f| f.workload == r.workload && f.mode == r.mode && f.before == Before::Fresh)
                .map_or(f64::NAN, |f| f.forkpool_wall);
            vec![
                r.workload.to_string(),
                r.before.what().to_string(),
                r.mode.arg().to_string(),
                r.python.as_ref().map_or("-".into(), |p| format!("{p:.2}")),
                format!("{:.2}", r.forkpool),
                format!("{:.2}", r.raw_fork),
                format!("{:.2}", r.forkpool / r.raw_fork),
                format!("{:+.0} %", 100.0 * (r.forkpool_wall / fresh - 1.0)),
            ]
        });
        t.push_str(&markdown(
            &[
                "workload",
                "before",
                "mode",
                "Python",
                "forkpool",
                "raw fork",
                "forkpool / raw fork",
                "forkpool wall vs fresh",
            ],
            3,
            rows,
        ));
        t
    }

    fn table(&self) -> String {
        let rows = self.rows.iter().map(|r| {
            let (py, ratio) = match r.python {
                Ok(p) => (fmt_time(p), format!("{:.1}x", p / r.forkpool)),
                Err(_) => ("-".into(), "-".into()),
            };
            let (what, ceil, frac) = match &r.ceiling {
                Some((what, c)) => (
                    what.clone(),
                    fmt_time(*c),
                    format!("{:.0} %", 100.0 * c / r.forkpool),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                r.workload.to_string(),
                py,
                fmt_time(r.forkpool),
                ratio,
                what,
                ceil,
                frac,
            ]
        });
        markdown(
            &[
                "workload",
                "Python",
                "forkpool",
                "Python / forkpool",
                "ceiling (what)",
                "ceiling",
                "forkpool at ceiling",
            ],
            1,
            rows,
        )
    }

    /// Ratios between rows: speed-ups from a second process, tasks per second.
    fn derived(&self) -> String {
        let procs = self.sizes.processes;
        let get = |id: &str| self.rows.iter().find(|r| r.id == id);
        let mut t = String::new();
        let pair = |a: &str, b: &str| -> Option<(Option<f64>, f64)> {
            let (a, b) = (get(a)?, get(b)?);
            let py = match (&a.python, &b.python) {
                (Ok(x), Ok(y)) => Some(x / y),
                _ => None,
            };
            Some((py, a.forkpool / b.forkpool))
        };
        let py = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}x"));
        if let Some((p, f)) = pair("random-serial", "random-new-2") {
            let _ = writeln!(
                t,
                "- random fill, new array, {procs} processes vs serial: Python {}, forkpool {f:.2}x \
                 (threads on new memory: {})",
                py(p),
                get("random-new-2").and_then(|r| r.ceiling.as_ref()).map_or(
                    "-".into(),
                    |c| format!(
                        "{:.2}x",
                        get("random-serial").map_or(0.0, |s| s.forkpool) / c.1
                    )
                )
            );
        }
        if let (Some(serial), Some(lazy)) = (get("random-serial"), self.lazy_random) {
            let _ = writeln!(
                t,
                "- random fill, {procs} processes into a lazily allocated array vs serial \
                 (experiment): {:.2}x",
                serial.forkpool / lazy
            );
        }
        if let Some((p, f)) = pair("random-existing-1", "random-existing-2") {
            let _ = writeln!(
                t,
                "- random fill, existing array, {procs} processes vs 1: Python {}, forkpool {f:.2}x",
                py(p)
            );
        }
        if let Some((p, f)) = pair("fill-warm-1", "fill-warm-2") {
            let _ = writeln!(
                t,
                "- warm shared fill, {procs} processes vs 1: Python {}, forkpool {f:.2}x",
                py(p)
            );
        }
        if let Some((p, f)) = pair("fill-cold-1", "fill-cold-2") {
            let _ = writeln!(
                t,
                "- cold shared fill, {procs} processes vs 1: Python {}, forkpool {f:.2}x",
                py(p)
            );
        }
        if let Some(r) = get("map-chunksize-1") {
            let n = self.sizes.map_small as f64;
            let _ = writeln!(
                t,
                "- map chunksize 1: Python {} tasks/s, forkpool {:.0} tasks/s",
                r.python
                    .as_ref()
                    .map_or("-".into(), |p| format!("{:.0}", n / p)),
                n / r.forkpool
            );
        }
        for n in &self.notes {
            let _ = writeln!(t, "- {n}");
        }
        t
    }
}

/// A markdown table (for RESULTS.md) of `header` and `rows`, the columns
/// from `first_number` on aligned right.
fn markdown(
    header: &[&str],
    first_number: usize,
    rows: impl Iterator<Item = Vec<String>>,
) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::ASCII_MARKDOWN)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut().skip(first_number) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    format!("{}\n", table.trim_fmt())
}

/// A duration in seconds, with a unit that keeps 3 significant digits.
fn fmt_time(secs: f64) -> String {
    let (v, unit) = if secs < 1e-6 {
        (secs * 1e9, "ns")
    } else if secs < 1e-3 {
        (secs * 1e6, "µs")
    } else if secs < 1.0 {
        (secs * 1e3, "ms")
    } else {
        (secs, "s")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

/// One line about the machine: CPUs, memory, kernel.
fn machine() -> String {
    use procfs::Current;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = forkpool_shm::MemInfo::read()
        .map(|m| format!("{}", forkpool_shm::ByteSize(m.mem_total)))
        .unwrap_or_else(|_| "?".into());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let model = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_owned))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem} RAM, Linux {kernel}")
}

fn main() {
    let opts = Options::parse();
    let sizes = Sizes::new(&opts);
    let python = if opts.no_python {
        eprintln!("compare: --no-python: the Python column is skipped");
        None
    } else {
        let mut p = Python::find(opts.python.as_ref());
        p.processes = sizes.processes;
        Some(p)
    };
    let mut r = Runner {
        opts,
        sizes,
        python,
        rows: Vec::new(),
        sched: Vec::new(),
        notes: Vec::new(),
        lazy_random: None,
    };
    eprintln!("compare: {}", machine());
    if let Some(p) = &r.python {
        eprintln!("compare: {}", p.python.describe());
    }
    // Start-up first, while this process is small; the rest after.
    r.startup_rows();
    r.apply_rows();
    r.map_rows();
    r.pass_rows();
    r.round_trip_rows();
    r.buffer_round_trip_rows();
    r.fill_rows();
    r.random_rows();
    r.rng_rows();
    r.pid_fill_rows();
    r.counter_rows();
    r.sched_rows();

    println!("forkpool vs Python multiprocessing, {}", today());
    println!("machine: {}", machine());
    match &r.python {
        Some(p) => println!("python: {}", p.python.describe()),
        None => println!("python: not run (--no-python): the Python column is empty"),
    }
    println!(
        "command: cargo run --release -p forkpool-benches --bin compare{}",
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    println!();
    print!("{}", r.table());
    println!();
    print!("{}", r.derived());
    if !r.sched.is_empty() {
        println!();
        print!("{}", r.sched_table());
    }
}
