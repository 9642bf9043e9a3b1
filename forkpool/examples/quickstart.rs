//! A tour of forkpool in one run: map, imap, apply_async, a panic, a killed
//! worker and its replacement, close and join.
//!
//! Run: `cargo run --release -p forkpool --example quickstart`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forkpool::{Error, Pool};

// ANCHOR: functions
/// Set in every worker by the initializer.
static GREETING: OnceLock<String> = OnceLock::new();

fn collatz_len(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn hello(name: String) -> String {
    format!(
        "{} {name} from pid {}",
        GREETING.get().unwrap(),
        std::process::id()
    )
}

// ANCHOR_END: functions

fn fragile(x: u32) -> u32 {
    assert!(x != 13, "13 is unlucky");
    x
}

fn slow(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Pids as plain numbers, for printing.
fn raw(pids: Vec<forkpool::Pid>) -> Vec<i32> {
    pids.into_iter().map(forkpool::Pid::as_raw).collect()
}

fn main() -> Result<(), Error> {
    // ANCHOR: pool
    let greeting = String::from("hello");
    let pool = Pool::builder()
        .processes(2)
        .initializer(move || GREETING.set(greeting.clone()).unwrap())
        .build()?;
    println!(
        "pool of {} workers: {:?}",
        pool.processes(),
        raw(pool.worker_pids())
    );

    let t = Instant::now();
    let lens = pool.map(collatz_len, 1..=1_000_000)?;
    let (n, steps) = lens.iter().enumerate().max_by_key(|(_, s)| **s).unwrap();
    println!(
        "map: longest Collatz chain below 1e6 starts at {} ({steps} steps), {:?}",
        n + 1,
        t.elapsed()
    );

    for line in pool.imap(hello, ["ada", "grace"].map(String::from), 1) {
        println!("imap: {}", line?);
    }
    // ANCHOR_END: pool

    let h = pool.apply_async(slow, 50);
    println!("apply_async: ready at once? {}", h.ready());
    println!("apply_async: got {} ms", h.get()?);

    match pool.map(fragile, 0..20) {
        Err(e) => println!("map with a panicking item: {e}"),
        Ok(_) => unreachable!(),
    }

    // ANCHOR: kill
    let victim = pool.worker_pids()[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL);
    });
    let results: Vec<_> = pool.imap(slow, [300u64; 4], 1).collect();
    killer.join().unwrap();
    for r in &results {
        match r {
            Ok(ms) => println!("imap after a kill: ok ({ms} ms)"),
            Err(e) => println!("imap after a kill: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    println!(
        "workers now: {:?} (replaced {victim})",
        raw(pool.worker_pids())
    );
    println!(
        "and the pool still works: {:?}",
        pool.map(collatz_len, [27, 97])?
    );
    // ANCHOR_END: kill

    pool.close();
    pool.join()?;
    println!(
        "closed and joined: workers left {:?}",
        raw(pool.worker_pids())
    );
    Ok(())
}
