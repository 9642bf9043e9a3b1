//! The set-up run for real, each time in a target directory of its own
//! (a copy of the `numpy-env` binary under a directory cargo would have
//! tagged): from a Python without numpy, in parallel processes, without
//! the `venv` module, and with no Python at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// A target directory of its own (with `CACHEDIR.TAG`, as cargo makes it)
/// holding a copy of the `numpy-env` binary.
fn isolated_target() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .expect("write CACHEDIR.TAG");
    std::fs::create_dir(dir.path().join("debug")).expect("mkdir");
    let exe = dir.path().join("debug").join("numpy-env");
    std::fs::copy(env!("CARGO_BIN_EXE_numpy-env"), &exe).expect("copy the binary");
    (dir, exe)
}

/// A fresh virtual environment without numpy (with pip only if asked).
fn python_without_numpy(dir: &Path, with_pip: bool) -> PathBuf {
    let venv = dir.join("bare");
    let mut command = Command::new("python3");
    command.args(["-m", "venv"]);
    if !with_pip {
        command.arg("--without-pip");
    }
    let out = command
        .arg(&venv)
        .output()
        .expect("python3 is needed to run these tests");
    assert!(out.status.success(), "python3 -m venv: {out:?}");
    let python = venv.join("bin").join("python");
    let has = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .expect("run");
    assert!(!has.status.success(), "a fresh venv should not have numpy");
    python
}

fn run(exe: &Path, python: &Path) -> Command {
    let mut command = Command::new(exe);
    command.env("FORKPOOL_PYTHON", python);
    command
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_python_without_numpy_gets_a_venv_under_target_made_once_by_parallel_processes() {
    let (dir, exe) = isolated_target();
    let python = python_without_numpy(dir.path(), false);
    // Two processes at once, as nextest runs two numpy tests: one installs,
    // the other waits on the lock and reuses its work.
    let children: Vec<_> = (0..2)
        .map(|_| {
            run(&exe, &python)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let mut installs = 0;
    for out in &outs {
        let (stdout, stderr) = text(out);
        assert!(out.status.success(), "numpy-env failed: {stderr}");
        let venv = dir.path().join("python-numpy");
        assert!(
            stdout.contains("numpy") && stdout.contains(&venv.display().to_string()),
            "{stdout}"
        );
        installs += stderr.matches("installing it into").count();
    }
    assert_eq!(installs, 1, "exactly one process installs numpy");
    let venv_python = dir.path().join("python-numpy/bin/python");
    let out = Command::new(&venv_python)
        .args(["-c", "import numpy; print(numpy.ones(3).sum())"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3.0");
    // The system's (here: the bare venv's) Python was left alone.
    let out = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "numpy was installed into the Python we started from"
    );
    // A later run reuses the environment without installing again.
    let out = run(&exe, &python).output().expect("run");
    let (_, stderr) = text(&out);
    assert!(
        out.status.success() && !stderr.contains("installing"),
        "{stderr}"
    );
}

#[test]
fn a_python_without_the_venv_module_gets_numpy_by_pip_target_under_target() {
    let (dir, exe) = isolated_target();
    let python = python_without_numpy(dir.path(), true);
    // What Debian's python3 says without the python3-venv package.
    let wrapper = dir.path().join("python-without-venv");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = venv ]; then\n  echo 'The virtual environment was not created successfully because ensurepip is not available.' >&2\n  exit 1\nfi\nexec {} \"$@\"\n",
            python.display()
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = run(&exe, &wrapper).output().expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "numpy-env failed: {stderr}");
    assert!(stdout.contains("python-numpy-site"), "{stdout}");
    assert!(dir.path().join("python-numpy-site/numpy").is_dir());
    assert!(
        !dir.path().join("python-numpy").exists(),
        "no half-made venv is left"
    );
}

#[test]
fn no_python_at_all_is_a_clear_error_saying_what_to_install() {
    let (dir, exe) = isolated_target();
    let out = run(&exe, &dir.path().join("no-such-python3"))
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was not found") && stderr.contains("apt-get install python3"),
        "{stderr}"
    );
}
