//! The `fifo` demo, run through the real binary at a small size.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::demos;

#[test]
fn fifo_and_pipe_deliver_every_byte_with_matching_checksums() {
    let run = demos(&["fifo", "--rows", "48", "--cols", "16384"]);
    run.assert_ok();
    let size = 48 * 16384 * 8;
    assert_eq!(
        run.verified(),
        format!(
            "{size} bytes in 48 blocks through each of the FIFO and the anonymous pipe, every \
             block's checksum matching; consumers held a block, not the array; FIFO removed"
        )
    );
    for channel in ["named pipe (FIFO)", "anonymous pipe"] {
        let line = run.fact(channel);
        assert!(
            line.starts_with("6.0 MiB in ") && line.contains("/s") && line.contains("pipe buffer"),
            "{channel}: {line}"
        );
    }
    // The FIFO lived in a temporary directory that is gone.
    let fifo = run
        .fact("FIFO")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(fifo.ends_with("/blocks.fifo"), "{fifo}");
    assert!(!std::path::Path::new(&fifo).parent().unwrap().exists());
    // The producer held the array; each consumer a block.
    let table = run.memory_table("memory while the consumer reads the stream");
    let roles: Vec<&str> = table.iter().map(|(_, role, _)| role.as_str()).collect();
    assert_eq!(
        roles,
        ["parent", "consumer (FIFO)", "consumer (pipe)", "total"]
    );
    assert!(table[0].2[0] >= size, "producer RSS {}", table[0].2[0]);
    assert!(table[1].2[0] < size, "FIFO consumer RSS {}", table[1].2[0]);
}

#[test]
fn fifo_with_a_larger_pipe_buffer() {
    let run = demos(&[
        "fifo",
        "--rows",
        "8",
        "--cols",
        "100000",
        "--pipe-buffer",
        "262144",
    ]);
    run.assert_ok();
    assert!(
        run.fact("anonymous pipe")
            .ends_with("(pipe buffer 256.0 KiB)")
    );
    assert!(run.verified().starts_with("6400000 bytes in 8 blocks"));
}

#[test]
fn fifo_producer_does_not_hang_when_the_consumer_dies() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demos"))
        .args([
            "fifo",
            "--rows",
            "64",
            "--cols",
            "16384",
            "--consumer-dies-after",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the producer hung after its consumer died");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("the consumer (pid ") && stderr.contains("was killed by SIGKILL"),
        "{stderr}"
    );
}

#[test]
fn fifo_refuses_bad_input_clearly() {
    let run = demos(&["fifo", "--rows", "0"]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("need --rows, --cols, --timeout and --pipe-buffer of at least 1"),
        "{}",
        run.stderr
    );
    let run = demos(&["fifo", "--rows", "1000000", "--cols", "1000000"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("the producer's array") && run.stderr.contains("is available"),
        "{}",
        run.stderr
    );
}
