//! A Python that imports numpy, for the workspace's numpy checks: the
//! `.npy` round-trip tests of `forkpool-shm`, the `memmap` demo's check by
//! numpy, and the comparison runner's Python column.
//!
//! [`python`] finds one, once per process:
//!
//! 1. the Python named by `$FORKPOOL_PYTHON` (default `python3` on `PATH`),
//!    if it already imports numpy;
//! 2. otherwise a virtual environment under the build's `target/`
//!    (`target/python-numpy`), made on first use with `python3 -m venv` and
//!    `pip install numpy`, and reused by every later run;
//! 3. where the `venv` module is missing (Debian and Ubuntu ship it apart,
//!    as `python3-venv`), `pip install --target target/python-numpy-site`
//!    and `PYTHONPATH` instead.
//!
//! Nothing is installed into the system's Python. Test processes run in
//! parallel (`cargo nextest` starts one per test), so the set-up holds an
//! exclusive `flock` on `target/python-numpy.lock`: one process installs,
//! the others wait for it and then reuse its environment. A machine without
//! Python 3, or where numpy cannot be installed, gets an [`Error`] that says
//! what to install.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

/// The environment variable naming the Python to start from (default
/// `python3`).
pub const PYTHON_VAR: &str = "FORKPOOL_PYTHON";

/// A Python interpreter that imports numpy.
#[derive(Debug, Clone)]
pub struct Python {
    exe: OsString,
    /// Extra `PYTHONPATH` entry (the `pip install --target` fallback).
    site: Option<PathBuf>,
    version: String,
    numpy: String,
    origin: String,
}

impl Python {
    /// A command that runs this Python (add `-c script` or a script path).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.exe);
        if let Some(site) = &self.site {
            let mut paths = vec![site.clone()];
            if let Some(old) = std::env::var_os("PYTHONPATH") {
                paths.extend(std::env::split_paths(&old));
            }
            let joined = std::env::join_paths(paths).unwrap_or_else(|_| site.clone().into());
            command.env("PYTHONPATH", joined);
        }
        command
    }

    /// One line for a report: `Python 3.11.2, numpy 2.4.6 (<where>)`.
    pub fn describe(&self) -> String {
        format!(
            "Python {}, numpy {} ({})",
            self.version, self.numpy, self.origin
        )
    }

    /// The numpy version, e.g. `2.4.6`.
    pub fn numpy_version(&self) -> &str {
        &self.numpy
    }
}

/// Why no Python with numpy could be had: the message says what to install.
#[derive(Debug, Clone)]
pub struct Error {
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A Python that imports numpy: the system's, or one set up under
/// `target/` on first use (see the crate docs). Found once per process;
/// later calls return the same answer.
pub fn python() -> Result<&'static Python, Error> {
    static PYTHON: OnceLock<Result<Python, Error>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let base = std::env::var_os(PYTHON_VAR).unwrap_or_else(|| "python3".into());
            python_from(&base)
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn error(message: impl Into<String>) -> Error {
    Error {
        message: message.into(),
    }
}

const HOW_TO_INSTALL: &str = "install numpy for it (Debian/Ubuntu: `apt-get install python3-numpy`, \
     or `apt-get install python3-venv` so that the set-up can make its own environment; \
     elsewhere: `python3 -m pip install numpy`), or point FORKPOOL_PYTHON at a Python that has numpy";

/// Like [`python`], starting from the interpreter `base` instead of
/// `$FORKPOOL_PYTHON` or `python3`, and not cached: `base` itself if it
/// imports numpy, else the environment under `target/` (shared by every
/// `base`: the first one to need it makes it).
pub fn python_from(base: impl AsRef<OsStr>) -> Result<Python, Error> {
    let base = base.as_ref().to_owned();
    let shown = base.to_string_lossy().into_owned();
    match probe(Command::new(&base), &format!("{shown}, the system's")) {
        Ok(Some(python)) => return Ok(python.with_exe(&base, None)),
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(error(format!(
                "`{shown}` was not found: the numpy checks need Python 3. Install it \
                 (Debian/Ubuntu: `apt-get install python3 python3-venv`; Fedora: \
                 `dnf install python3`; macOS: `brew install python`), or point \
                 {PYTHON_VAR} at a Python 3 interpreter"
            )));
        }
        Err(e) => return Err(error(format!("could not run `{shown}`: {e}"))),
    }

    let target = target_dir();
    std::fs::create_dir_all(&target)
        .map_err(|e| error(format!("could not create {}: {e}", target.display())))?;
    // One process installs; the others wait here, then find its work done.
    let _lock = lock(&target.join("python-numpy.lock"))?;
    let venv = target.join("python-numpy");
    let venv_python = venv.join("bin").join("python");
    let site = target.join("python-numpy-site");

    if venv_python.exists()
        && let Ok(Some(p)) = probe(Command::new(&venv_python), "")
    {
        return Ok(p.with_exe(venv_python.as_os_str(), None).at(&venv));
    }
    if site.exists() {
        let mut command = Command::new(&base);
        command.env("PYTHONPATH", &site);
        if let Ok(Some(p)) = probe(command, "") {
            return Ok(p.with_exe(&base, Some(site.clone())).at(&site));
        }
    }

    eprintln!(
        "numpy-env: `{shown}` has no numpy: installing it into {} (once; later runs reuse it)",
        venv.display()
    );
    let venv_failure = if venv_python.exists() {
        None
    } else {
        let out = run(Command::new(&base)
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        (!out.status.success()).then(|| tail(&out))
    };
    match venv_failure {
        None => {
            let out = run(Command::new(&venv_python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "numpy",
            ]))?;
            if !out.status.success() {
                return Err(error(format!(
                    "pip could not install numpy into {}: {}\nCheck that PyPI can be reached, \
                     or {HOW_TO_INSTALL}",
                    venv.display(),
                    tail(&out)
                )));
            }
            match probe(Command::new(&venv_python), "") {
                Ok(Some(p)) => Ok(p.with_exe(venv_python.as_os_str(), None).at(&venv)),
                _ => Err(error(format!(
                    "numpy was installed into {} but does not import; remove that directory \
                     and try again, or {HOW_TO_INSTALL}",
                    venv.display()
                ))),
            }
        }
        Some(venv_error) => {
            // No venv module (Debian's python3 without python3-venv): install
            // into a directory of our own with the system's pip, if it has one.
            let _ = std::fs::remove_dir_all(&venv);
            let out = run(Command::new(&base)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--upgrade",
                    "--target",
                ])
                .arg(&site)
                .arg("numpy"))?;
            let mut command = Command::new(&base);
            command.env("PYTHONPATH", &site);
            match (out.status.success(), probe(command, "")) {
                (true, Ok(Some(p))) => Ok(p.with_exe(&base, Some(site.clone())).at(&site)),
                _ => Err(error(format!(
                    "`{shown}` has no numpy and none could be installed: `{shown} -m venv` \
                     failed ({venv_error}), and so did `{shown} -m pip install --target` ({}). \
                     For `{shown}`, {HOW_TO_INSTALL}",
                    tail(&out)
                ))),
            }
        }
    }
}

impl Python {
    fn with_exe(mut self, exe: &OsStr, site: Option<PathBuf>) -> Python {
        self.exe = exe.to_owned();
        self.site = site;
        self
    }

    fn at(mut self, dir: &Path) -> Python {
        self.origin = format!("set up in {}", dir.display());
        self
    }
}

/// Runs `command` and reads whether it imports numpy: `Ok(None)` if it ran
/// but numpy did not import, `Err` if it could not be started.
fn probe(mut command: Command, origin: &str) -> io::Result<Option<Python>> {
    let out = command
        .args([
            "-c",
            "import sys, numpy; print(sys.version.split()[0], numpy.__version__)",
        ])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let said = String::from_utf8_lossy(&out.stdout);
    let mut words = said.split_whitespace();
    let (Some(version), Some(numpy)) = (words.next(), words.next()) else {
        return Ok(None);
    };
    Ok(Some(Python {
        exe: OsString::new(),
        site: None,
        version: version.to_owned(),
        numpy: numpy.to_owned(),
        origin: origin.to_owned(),
    }))
}

fn run(command: &mut Command) -> Result<Output, Error> {
    command
        .output()
        .map_err(|e| error(format!("could not run {command:?}: {e}")))
}

/// The last lines of what a command said on stderr (or stdout), for an error.
fn tail(out: &Output) -> String {
    let text = if out.stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        String::from_utf8_lossy(&out.stderr)
    };
    let lines: Vec<&str> = text.trim().lines().collect();
    let start = lines.len().saturating_sub(3);
    format!("{}: {}", out.status, lines[start..].join(" / "))
}

/// The build's target directory: the nearest ancestor of this executable
/// that cargo marked with `CACHEDIR.TAG` (so `CARGO_TARGET_DIR` is
/// honoured), else a directory under the system's temporary directory.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| std::env::temp_dir().join("forkpool-numpy-env"))
}

fn lock(path: &Path) -> Result<Flock<File>, Error> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| error(format!("could not open {}: {e}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| error(format!("could not lock {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_found_imports_numpy() {
        let python = python().unwrap_or_else(|e| panic!("{e}"));
        let out = python
            .command()
            .args(["-c", "import numpy; print(numpy.arange(4).sum())"])
            .output()
            .expect("run python");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
        assert!(!python.numpy_version().is_empty());
    }
}
