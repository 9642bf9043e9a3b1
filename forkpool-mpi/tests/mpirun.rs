//! The pool under real `mpirun`, 4 ranks on this machine.
//!
//! `cargo test -p forkpool-mpi --features mpi` runs this file as a plain
//! program (no libtest harness). Started without MPI around it, it is the
//! launcher: it runs itself under `mpirun` once per check, each with a
//! deadline, and checks the exit status and the output. Started by
//! `mpirun`, it is a rank and runs the check named on its command line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forkpool_mpi::{Error, NodeArray, Pool};

const RANKS: &str = "4";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--rank") => rank_main(&args[2]),
        _ => launcher(),
    }
}

// ---------------------------------------------------------------- ranks

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(x: u32) -> (u32, u32) {
    (x, std::process::id())
}

fn odd_panics(x: u32) -> u32 {
    assert!(x.is_multiple_of(2), "item {x} is odd");
    x
}

/// Sets `row` to this rank's pid; says whether it was untouched (zero).
fn mark((array, row): (NodeArray<f64>, usize)) -> (u32, bool) {
    let pid = std::process::id();
    let mut buf = vec![0.0; array.row_len()];
    array.read_row(row, &mut buf);
    let untouched = buf.iter().all(|&v| v == 0.0);
    array.fill_row(row, f64::from(pid));
    (pid, untouched)
}

/// The value of `row` if every element holds it.
fn row_value((array, row): (NodeArray<f64>, usize)) -> Option<f64> {
    let mut buf = vec![0.0; array.row_len()];
    array.read_row(row, &mut buf);
    buf.iter().all(|&v| v == buf[0]).then_some(buf[0])
}

/// Dies (SIGKILL) on item 5; the others sleep a little.
fn die_on_five(x: u32) -> u32 {
    if x == 5 {
        // SAFETY: kill(2) on our own pid with a valid signal.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(20));
    x
}

fn rank_main(check: &str) {
    let outcome = match check {
        "api" => check_api(),
        "mismatch" => check_mismatch(),
        "rank_dies" => check_rank_dies(),
        "rank0_dies" => check_rank0_dies(),
        other => panic!("no check {other}"),
    };
    if let Err(e) = outcome {
        eprintln!("check {check} failed: {e}");
        std::process::exit(1);
    }
}

fn check_api() -> Result<(), String> {
    let Some(pool) = Pool::world().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let e = |e: Error| e.to_string();
    if pool.ranks() != 3 {
        return Err(format!("{} worker ranks, not 3", pool.ranks()));
    }
    let squares = pool.map(square, 0..100_000u64).map_err(e)?;
    if squares.len() != 100_000
        || squares
            .iter()
            .enumerate()
            .any(|(i, &s)| s != (i * i) as u64)
    {
        return Err("map's results are wrong or out of order".into());
    }
    println!("ok: map of 100000 items in order");

    let mut seen = vec![false; 3000];
    let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for r in pool.imap_unordered(pid_of, 0..3000u32, 1) {
        let (x, pid) = r.map_err(e)?;
        if std::mem::replace(&mut seen[x as usize], true) {
            return Err(format!("item {x} came twice"));
        }
        *by_pid.entry(pid).or_default() += 1;
    }
    let workers: Vec<u32> = pool.layout()[1..].iter().map(|r| r.pid as u32).collect();
    if !seen.iter().all(|&s| s) {
        return Err("an item of imap_unordered never came".into());
    }
    if by_pid.keys().any(|p| !workers.contains(p)) || by_pid.len() != 3 {
        return Err(format!(
            "items ran on {by_pid:?}, not on each of the worker ranks {workers:?}"
        ));
    }
    println!(
        "ok: imap_unordered chunksize 1, 3000 items, each once, on all 3 worker ranks {by_pid:?}"
    );

    let (_, pid) = pool.apply(pid_of, 7).map_err(e)?;
    if pid == std::process::id() || !workers.contains(&pid) {
        return Err(format!("apply ran in pid {pid}, not on a worker rank"));
    }
    println!("ok: apply ran on a worker rank (pid {pid})");

    let out: Vec<_> = pool.imap(odd_panics, 0..10u32, 3).collect();
    for (i, r) in out.iter().enumerate() {
        match (i % 2, r) {
            (0, Ok(v)) if *v == i as u32 => {}
            (1, Err(Error::Panicked { item, message, .. }))
                if *item == i && message.contains(&format!("item {i} is odd")) => {}
            _ => return Err(format!("item {i}: {r:?}")),
        }
    }
    println!("ok: a panic fails its own item only, with its message");

    let array = pool.node_array::<f64>(&[300, 1000]).map_err(e)?;
    let tasks: Vec<_> = (0..300)
        .map(|r| (array.node_of_row(r), (array.clone(), r)))
        .collect();
    let mut rows_by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for r in pool.imap_on(mark, tasks, 4, false) {
        let (pid, untouched) = r.map_err(e)?;
        if !untouched {
            return Err("a row was written twice".into());
        }
        *rows_by_pid.entry(pid).or_default() += 1;
    }
    // Every row, read by a task on its own node; rank 0's node's rows
    // by rank 0 too.
    let mut counted: BTreeMap<u32, usize> = BTreeMap::new();
    let reads: Vec<_> = (0..300)
        .map(|r| (array.node_of_row(r), (array.clone(), r)))
        .collect();
    for (row, value) in pool.imap_on(row_value, reads, 8, true).enumerate() {
        let pid = match value.map_err(e)? {
            Some(v) if workers.contains(&(v as u32)) => v as u32,
            other => return Err(format!("row {row} is not one worker's pid: {other:?}")),
        };
        *counted.entry(pid).or_default() += 1;
    }
    let mut buf = vec![0.0; 1000];
    for row in array.rows_here() {
        array.read_row(row, &mut buf);
        if !workers.contains(&(buf[0] as u32)) || buf.iter().any(|&v| v != buf[0]) {
            return Err(format!("rank 0 reads {} in row {row}", buf[0]));
        }
    }
    if counted != rows_by_pid || counted.values().sum::<usize>() != 300 {
        return Err(format!(
            "the rows hold {counted:?}, the workers said {rows_by_pid:?}"
        ));
    }
    if pool.nodes() == 2 {
        // Pretend nodes: 1 worker on node 0 (with rank 0), 2 on node 1,
        // and the rows in that proportion.
        if array.rows_of_node(0) != (0..100) || array.rows_of_node(1) != (100..300) {
            return Err(format!(
                "rows split {:?} {:?}",
                array.rows_of_node(0),
                array.rows_of_node(1)
            ));
        }
        // A task on node 1 touching a row of node 0 fails with a message
        // naming the node to run it on.
        match pool
            .imap_on(mark, [(1, (array.clone(), 0))], 1, true)
            .next()
        {
            Some(Err(Error::Panicked { message, .. }))
                if message.contains("row 0 is not on this node") && message.contains("node 0") => {}
            other => return Err(format!("a row of another node: {other:?}")),
        }
        println!("ok: rows split 100 + 200 over 2 nodes; a task touching another node's row fails");
    }
    println!("ok: node-shared array: the workers' rows seen by rank 0 {counted:?}");
    drop(array);
    drop(pool);
    println!("all checks passed");
    Ok(())
}

fn check_mismatch() -> Result<(), String> {
    match Pool::world() {
        Err(e @ Error::NotSameBinary { .. }) => {
            println!("refused: {e}");
            Ok(())
        }
        Err(e) => Err(format!("another error: {e}")),
        Ok(_) => Err("ranks of different binaries were accepted".into()),
    }
}

fn check_rank_dies() -> Result<(), String> {
    let Some(pool) = Pool::world().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let out: Vec<_> = pool.imap(die_on_five, 0..40u32, 1).collect();
    let mut died = Vec::new();
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) if *v == i as u32 => {}
            Err(Error::RankDied { item, .. }) if *item == i => died.push(i),
            other => return Err(format!("item {i}: {other:?}")),
        }
    }
    if !died.contains(&5) || died.len() > 2 {
        return Err(format!("items lost with the dead rank: {died:?}"));
    }
    if pool.live_ranks().len() != 2 {
        return Err(format!("live ranks {:?}", pool.live_ranks()));
    }
    println!("{}", out[5].as_ref().unwrap_err());
    // The pool goes on with the ranks left.
    let again = pool.map(square, 0..1000u64).map_err(|e| e.to_string())?;
    if again[999] != 999 * 999 {
        return Err("map after the death is wrong".into());
    }
    println!(
        "ok: the rank that died failed items {died:?}; the other 38 ran, and a map after it too"
    );
    Ok(())
}

fn check_rank0_dies() -> Result<(), String> {
    match Pool::world() {
        Ok(Some(pool)) => {
            // Die only once every worker serves (past the start-up
            // collectives, which no liveness check can watch): each has
            // run a task.
            let mut pids = std::collections::BTreeSet::new();
            while pids.len() < 3 {
                for r in pool.imap_unordered(pid_of, 0..30u32, 1) {
                    pids.insert(r.map_err(|e| e.to_string())?.1);
                }
            }
            // SAFETY: kill(2) on our own pid with a valid signal.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("killed")
        }
        Ok(None) => Err("a worker returned None though rank 0 never stopped it".into()),
        Err(e) => {
            println!("worker: {e}");
            Ok(())
        }
    }
}

// ------------------------------------------------------------- launcher

struct Run {
    status: Option<i32>,
    output: String,
    timed_out: bool,
}

/// Runs `mpirun` with `args`, killing it after `deadline`.
fn mpirun(args: &[&str], deadline: Duration) -> Run {
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun runs (install openmpi-bin)");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let readers = [
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    ];
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mpirun") {
            break s;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for mpirun");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    Run {
        status: status.code(),
        output,
        timed_out,
    }
}

fn expect(name: &str, ok: bool, run: &Run) -> bool {
    if ok {
        println!("test {name} ... ok");
    } else {
        println!(
            "test {name} ... FAILED (status {:?}, timed out: {})\n{}",
            run.status, run.timed_out, run.output
        );
    }
    ok
}

fn launcher() {
    let exe = std::env::current_exe().expect("the test's own path");
    let exe = exe.to_str().expect("a UTF-8 path");
    let mut all = true;
    let long = Duration::from_secs(180);

    let run = mpirun(&["-n", RANKS, exe, "--rank", "api"], long);
    all &= expect(
        "map_imap_apply_panics_and_node_array_on_4_ranks",
        run.status == Some(0) && run.output.contains("all checks passed"),
        &run,
    );

    // The same on two pretend nodes (each node's ranks split in two):
    // rows split over the nodes, tasks routed to the node of their rows.
    let run = mpirun(
        &[
            "-x",
            "FORKPOOL_MPI_TEST_NODES=2",
            "-n",
            RANKS,
            exe,
            "--rank",
            "api",
        ],
        long,
    );
    all &= expect(
        "node_array_rows_split_over_2_pretend_nodes_and_tasks_routed_to_their_node",
        run.status == Some(0)
            && run.output.contains("rows split 100 + 200 over 2 nodes")
            && run.output.contains("all checks passed"),
        &run,
    );

    // A copy with one byte more is another binary.
    let dir = std::env::temp_dir().join(format!("forkpool-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let other = dir.join("other-binary");
    let mut bytes = std::fs::read(exe).expect("read the test binary");
    bytes.push(0);
    std::fs::write(&other, &bytes).expect("write the copy");
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the copy executable");
    let other = other.to_str().expect("a UTF-8 path");
    let run = mpirun(
        &[
            "-n", "2", exe, "--rank", "mismatch", ":", "-n", "2", other, "--rank", "mismatch",
        ],
        long,
    );
    all &= expect(
        "ranks_running_different_binaries_are_refused_on_every_rank",
        run.status == Some(0)
            && run
                .output
                .matches("refused: rank 0 runs the binary")
                .count()
                == 4
            && run.output.contains("rank 2: ")
            && run.output.contains("rank 3: "),
        &run,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Path::new(other);

    // By default mpirun ends the job when a rank dies: nobody waits.
    let run = mpirun(&["-n", RANKS, exe, "--rank", "rank_dies"], long);
    all &= expect(
        "a_rank_killed_mid_map_ends_the_job_by_default",
        !run.timed_out && run.status != Some(0) && run.output.contains("signal 9"),
        &run,
    );

    // With --enable-recovery the job goes on and rank 0 gets errors.
    let run = mpirun(
        &["--enable-recovery", "-n", RANKS, exe, "--rank", "rank_dies"],
        long,
    );
    all &= expect(
        "a_rank_killed_mid_map_fails_its_items_and_the_pool_goes_on_with_enable_recovery",
        !run.timed_out && run.status == Some(0) && run.output.contains("died while running it"),
        &run,
    );

    // Workers whose rank 0 died stop serving instead of waiting forever.
    let run = mpirun(
        &[
            "--enable-recovery",
            "-n",
            RANKS,
            exe,
            "--rank",
            "rank0_dies",
        ],
        Duration::from_secs(60),
    );
    all &= expect(
        "workers_stop_when_rank_0_dies_with_enable_recovery",
        !run.timed_out && run.output.matches("rank 0 (pid").count() == 3,
        &run,
    );

    if !all {
        std::process::exit(1);
    }
    println!("test result: ok");
}
