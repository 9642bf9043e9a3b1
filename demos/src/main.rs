//! `demos`: every way of sharing one big array between processes that the
//! source notes compare, run, measured and verified.
//!
//! ```text
//! cargo run --release -p demos -- <demo> [--rows N --cols N --processes N ...]
//! cargo run --release -p demos -- all
//! ```
//!
//! See the library's documentation (`demos/src/lib.rs`) for what each demo
//! prints and checks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every way of sharing a big array between processes, measured and verified.
#[derive(Parser, Debug)]
#[command(name = "demos", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    demo: Demo,
}

#[derive(Subcommand, Debug)]
enum Demo {
    /// 1. np.memmap: a file-backed array that workers open and fill; also
    ///    written as .npy for numpy.
    Memmap(demos::memmap::Args),
    /// 2. pickle/unpickle: the array sent by value with every task; bytes
    ///    serialised and memory multiplied.
    Copy(demos::copy::Args),
    /// 3. mmap: an anonymous shared mapping filled by the workers.
    Mmap(demos::mmap::Args),
    /// 4. fork copy-on-write: a read-only array made before the pool forks;
    ///    --write shows the copied pages appear.
    ForkCow(demos::fork_cow::Args),
    /// 5. RawArray + initializer: populate(offset, blocksize) through a
    ///    handle the initializer put in a global.
    RawArray(demos::raw_array::Args),
    /// 6. Array(lock=False): fill with 42, workers check and write their
    ///    pid, the parent verifies every item.
    PidFill(demos::pid_fill::Args),
    /// 7. Parallel random fill, one Philox stream per row: serial against
    ///    parallel, bit-identical.
    RandomFill(demos::random_fill::Args),
    /// 8. Array(lock=True): counters with and without the lock, and a
    ///    worker killed while holding it.
    Locked(demos::locked::Args),
    /// 9. MemoryError on a machine without swap: a clear error before the
    ///    allocation, and the file-backed way that works.
    MemoryLimit(demos::memory_limit::Args),
    /// 10. Named pipes: array blocks streamed through a FIFO and through an
    ///     anonymous pipe.
    Fifo(demos::fifo::Args),
    /// Every demo, one after the other, at its default size.
    All,
}

/// The names `all` runs, in the order of the notes.
const ALL: [&str; 10] = [
    "memmap",
    "copy",
    "mmap",
    "fork-cow",
    "raw-array",
    "pid-fill",
    "random-fill",
    "locked",
    "memory-limit",
    "fifo",
];

fn run(demo: Demo) -> anyhow::Result<()> {
    match demo {
        Demo::Memmap(a) => demos::memmap::run(&a),
        Demo::Copy(a) => demos::copy::run(&a),
        Demo::Mmap(a) => demos::mmap::run(&a),
        Demo::ForkCow(a) => demos::fork_cow::run(&a),
        Demo::RawArray(a) => demos::raw_array::run(&a),
        Demo::PidFill(a) => demos::pid_fill::run(&a),
        Demo::RandomFill(a) => demos::random_fill::run(&a),
        Demo::Locked(a) => demos::locked::run(&a),
        Demo::MemoryLimit(a) => demos::memory_limit::run(&a),
        Demo::Fifo(a) => demos::fifo::run(&a),
        Demo::All => {
            let started = std::time::Instant::now();
            for name in ALL {
                let cli = Cli::try_parse_from(["demos", name])?;
                run(cli.demo).map_err(|e| e.context(format!("demo `{name}` failed")))?;
                println!();
            }
            println!(
                "all {} demos ran and verified in {:.1} s",
                ALL.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
