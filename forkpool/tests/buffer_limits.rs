//! `Buffer::from_slice` writes the numbers into the memory file with
//! `pwrite`: a write the kernel refuses is an error naming it, never a
//! partial buffer or a hang. Provoked with the file-size limit
//! (`RLIMIT_FSIZE`), which applies to memory files too; this file is its
//! own process with one test, because the limit and the ignored `SIGXFSZ`
//! are process-wide.

use forkpool::{Buffer, Error};

#[test]
fn a_buffer_whose_memory_file_cannot_be_written_is_an_io_error() {
    // SAFETY: ignoring a signal installs no handler code; the default
    // action of SIGXFSZ (killing the process) is what this avoids.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 1 << 20, 1 << 20)
        .unwrap();
    let small: Vec<f64> = (0..100_000).map(|i| i as f64).collect(); // 800 KB
    let b = Buffer::from_slice(&small).unwrap();
    assert_eq!(&b[..], &small[..]);
    let big: Vec<f64> = (0..300_000).map(|i| i as f64).collect(); // 2.4 MB
    match Buffer::from_slice(&big) {
        Err(e @ Error::Io { op, .. }) => {
            assert!(op.contains("writing a buffer's memory file"), "{e}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}
