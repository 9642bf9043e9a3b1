//! Memory reports: what `ps` and `pmap` show in the source notes, as an API.
//!
//! For each process, `/proc/<pid>/smaps_rollup` sums every mapping:
//!
//! - `Rss`: memory mapped into the process and resident. A page shared by
//!   five processes counts in full in each of them, which is why `top`
//!   seems to show five copies of a shared array;
//! - `Pss` (proportional set size): each resident page divided by the number
//!   of processes mapping it. Summed over processes, it is the real
//!   footprint: one shared copy, not five;
//! - `Shared_*`/`Private_*`: resident pages mapped by several processes or by
//!   this one alone, clean (unchanged since read from a file) or dirty.
//!
//! A [`MemoryReport`] collects these for a set of processes (the parent and
//! the pool's workers), each with a role label, and prints as a table.

use std::fmt;
use std::path::PathBuf;

use comfy_table::{CellAlignment, Table, presets};
use nix::unistd::Pid;

use crate::error::ShmError;
use crate::memory::read_proc;
use crate::units::ByteSize;

/// The memory figures of one process, in bytes, from
/// `/proc/<pid>/smaps_rollup`.
///
/// # Examples
///
/// ```
/// let me = forkpool_shm::MemoryUsage::current()?;
/// assert!(me.pss <= me.rss);
/// assert_eq!(me.shared() + me.private(), me.rss);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// The process (0 in a [`MemoryReport::total`]).
    pub pid: Pid,
    /// What the process is (`"parent"`, `"worker 1"`); empty if not given.
    pub role: String,
    /// Resident set size: resident memory mapped by the process.
    pub rss: u64,
    /// Proportional set size: resident memory, each page divided by the number
    /// of processes mapping it.
    pub pss: u64,
    /// The part of `pss` in private anonymous memory (heap, stacks).
    pub pss_anon: u64,
    /// The part of `pss` in file mappings (including file-backed arrays).
    pub pss_file: u64,
    /// The part of `pss` in shared memory (memfd, tmpfs: anonymous arrays).
    pub pss_shmem: u64,
    /// Resident pages shared with other processes, unmodified.
    pub shared_clean: u64,
    /// Resident pages shared with other processes, modified.
    pub shared_dirty: u64,
    /// Resident pages of this process alone, unmodified.
    pub private_clean: u64,
    /// Resident pages of this process alone, modified.
    pub private_dirty: u64,
    /// Memory swapped out.
    pub swap: u64,
}

impl MemoryUsage {
    /// Reads the figures of process `pid`.
    ///
    /// # Errors
    ///
    /// [`ShmError::Proc`] if `/proc/<pid>/smaps_rollup` cannot be read
    /// (`NotFound`: the process has exited; `PermissionDenied`: another
    /// user's process), [`ShmError::ProcFormat`] if `Rss` or `Pss` is
    /// missing.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{MemoryUsage, Pid};
    /// let me = MemoryUsage::of(Pid::this())?;
    /// assert_eq!(me.pid, Pid::this());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn of(pid: Pid) -> Result<MemoryUsage, ShmError> {
        let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
        let rollup = read_proc::<procfs::process::SmapsRollup>(pid, &path)?;
        Self::from_rollup(pid, &rollup).map_err(|reason| ShmError::ProcFormat { path, reason })
    }

    /// Reads the figures of the calling process.
    ///
    /// # Errors
    ///
    /// As for [`of`](Self::of).
    ///
    /// # Examples
    ///
    /// See [`MemoryUsage`].
    pub fn current() -> Result<MemoryUsage, ShmError> {
        Self::of(Pid::this())
    }

    /// The same figures with a role label.
    ///
    /// # Examples
    ///
    /// ```
    /// let me = forkpool_shm::MemoryUsage::current()?.with_role("parent");
    /// assert_eq!(me.role, "parent");
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// Resident pages shared with other processes (`Shared_Clean +
    /// Shared_Dirty`).
    ///
    /// # Examples
    ///
    /// See [`MemoryUsage`].
    pub fn shared(&self) -> u64 {
        self.shared_clean + self.shared_dirty
    }

    /// Resident pages of this process alone (`Private_Clean +
    /// Private_Dirty`).
    ///
    /// # Examples
    ///
    /// See [`MemoryUsage`].
    pub fn private(&self) -> u64 {
        self.private_clean + self.private_dirty
    }

    /// The figures of a parsed `smaps_rollup` (`procfs` gives them in bytes).
    fn from_rollup(pid: Pid, rollup: &procfs::process::SmapsRollup) -> Result<MemoryUsage, String> {
        let fields = &rollup
            .memory_map_rollup
            .0
            .first()
            .ok_or("no [rollup] line")?
            .extension
            .map;
        let field = |name: &str| fields.get(name).copied();
        let required = |name: &str| field(name).ok_or_else(|| format!("no `{name}` line"));
        Ok(MemoryUsage {
            pid,
            role: String::new(),
            rss: required("Rss")?,
            pss: required("Pss")?,
            // These appeared in Linux 5.x; older kernels lack them.
            pss_anon: field("Pss_Anon").unwrap_or(0),
            pss_file: field("Pss_File").unwrap_or(0),
            pss_shmem: field("Pss_Shmem").unwrap_or(0),
            shared_clean: field("Shared_Clean").unwrap_or(0),
            shared_dirty: field("Shared_Dirty").unwrap_or(0),
            private_clean: field("Private_Clean").unwrap_or(0),
            private_dirty: field("Private_Dirty").unwrap_or(0),
            swap: field("Swap").unwrap_or(0),
        })
    }
}

/// The memory figures of a set of processes, each with a role, printable as
/// a table with a total line.
///
/// The total of the `PSS` column is the real footprint of the set: an array
/// shared by every process counts once. Figures are read when each process is
/// added, so read them while the processes hold what you want to measure.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{MemoryReport, Pid};
///
/// let mut report = MemoryReport::new();
/// report.add(Pid::this(), "parent")?;
/// assert_eq!(report.entries()[0].role, "parent");
/// assert_eq!(report.total().pss, report.entries()[0].pss);
/// let table = report.to_string();
/// assert!(table.lines().next().unwrap().contains("PSS"));
/// println!("{table}");
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    entries: Vec<MemoryUsage>,
}

impl MemoryReport {
    /// An empty report.
    ///
    /// # Examples
    ///
    /// See [`MemoryReport`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the figures of `pid` now and adds them, labelled `role`.
    ///
    /// # Errors
    ///
    /// As for [`MemoryUsage::of`].
    ///
    /// # Examples
    ///
    /// See [`MemoryReport`].
    pub fn add(&mut self, pid: Pid, role: impl Into<String>) -> Result<&mut Self, ShmError> {
        self.entries.push(MemoryUsage::of(pid)?.with_role(role));
        Ok(self)
    }

    /// Adds figures read elsewhere (e.g. by a worker for itself).
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{MemoryReport, MemoryUsage};
    /// let mut report = MemoryReport::new();
    /// report.push(MemoryUsage::current()?.with_role("me"));
    /// assert_eq!(report.entries().len(), 1);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn push(&mut self, usage: MemoryUsage) -> &mut Self {
        self.entries.push(usage);
        self
    }

    /// Reads the figures of each `(pid, role)`.
    ///
    /// # Errors
    ///
    /// As for [`MemoryUsage::of`], for the first process that fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{MemoryReport, Pid};
    /// let report = MemoryReport::collect([(Pid::this(), "parent")])?;
    /// assert_eq!(report.entries().len(), 1);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn collect<I, R>(processes: I) -> Result<Self, ShmError>
    where
        I: IntoIterator<Item = (Pid, R)>,
        R: Into<String>,
    {
        let mut report = Self::new();
        for (pid, role) in processes {
            report.add(pid, role)?;
        }
        Ok(report)
    }

    /// The figures, one per process, in the order added.
    ///
    /// # Examples
    ///
    /// See [`MemoryReport`].
    pub fn entries(&self) -> &[MemoryUsage] {
        &self.entries
    }

    /// The sums over all processes (pid 0, role `"total"`).
    ///
    /// # Examples
    ///
    /// See [`MemoryReport`].
    pub fn total(&self) -> MemoryUsage {
        let sum = |figure: fn(&MemoryUsage) -> u64| self.entries.iter().map(figure).sum();
        MemoryUsage {
            pid: Pid::from_raw(0),
            role: "total".to_owned(),
            rss: sum(|e| e.rss),
            pss: sum(|e| e.pss),
            pss_anon: sum(|e| e.pss_anon),
            pss_file: sum(|e| e.pss_file),
            pss_shmem: sum(|e| e.pss_shmem),
            shared_clean: sum(|e| e.shared_clean),
            shared_dirty: sum(|e| e.shared_dirty),
            private_clean: sum(|e| e.private_clean),
            private_dirty: sum(|e| e.private_dirty),
            swap: sum(|e| e.swap),
        }
    }
}

impl fmt::Display for MemoryReport {
    /// A table: pid, role, RSS, PSS, shared, private, one line per process
    /// and a total line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table = Table::new();
        table
            .load_style(presets::NOTHING)
            .set_header(["pid", "role", "RSS", "PSS", "shared", "private"]);
        let sizes = |e: &MemoryUsage| {
            [e.rss, e.pss, e.shared(), e.private()].map(|n| ByteSize(n).to_string())
        };
        for e in &self.entries {
            let [rss, pss, shared, private] = sizes(e);
            table.add_row([e.pid.to_string(), e.role.clone(), rss, pss, shared, private]);
        }
        let [rss, pss, shared, private] = sizes(&self.total());
        table.add_row([String::new(), "total".into(), rss, pss, shared, private]);
        for column in [0, 2, 3, 4, 5] {
            if let Some(c) = table.column_mut(column) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        writeln!(f, "{}", table.trim_fmt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55ce090bc000-7fff7b859000 ---p 00000000 00:00 0   [rollup]\n\
        Rss:                1756 kB\nPss:                 328 kB\nPss_Dirty:           116 kB\n\
        Pss_Anon:            116 kB\nPss_File:            212 kB\nPss_Shmem:             0 kB\n\
        Shared_Clean:       1600 kB\nShared_Dirty:          0 kB\nPrivate_Clean:        40 kB\n\
        Private_Dirty:       116 kB\nSwap:                  0 kB\n";

    fn parse(text: &str) -> Result<MemoryUsage, String> {
        use procfs::FromBufRead;
        let rollup = procfs::process::SmapsRollup::from_buf_read(text.as_bytes())
            .map_err(|e| e.to_string())?;
        MemoryUsage::from_rollup(Pid::from_raw(0), &rollup)
    }

    #[test]
    fn parses_smaps_rollup() {
        let u = parse(ROLLUP).unwrap();
        assert_eq!(u.rss, 1756 * 1024);
        assert_eq!(u.pss, 328 * 1024);
        assert_eq!(u.pss_anon, 116 * 1024);
        assert_eq!(u.pss_file, 212 * 1024);
        assert_eq!(u.shared(), 1600 * 1024);
        assert_eq!(u.private(), 156 * 1024);
        let err = parse("55ce090bc000-7fff7b859000 ---p 00000000 00:00 0   [rollup]\nRss: 1 kB\n")
            .unwrap_err();
        assert!(err.contains("Pss"), "{err}");
    }

    #[test]
    fn prints_a_table_with_totals() {
        let one = parse(ROLLUP).unwrap();
        let mut report = MemoryReport::new();
        report.push(
            MemoryUsage {
                pid: Pid::from_raw(10),
                ..one.clone()
            }
            .with_role("parent"),
        );
        report.push(
            MemoryUsage {
                pid: Pid::from_raw(11),
                ..one
            }
            .with_role("worker 1"),
        );
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].contains("RSS") && lines[0].contains("private"),
            "{text}"
        );
        assert!(lines[1].trim_start().starts_with("10  parent"), "{text}");
        assert!(
            lines[2].contains("worker 1") && lines[2].contains("328.0 KiB"),
            "{text}"
        );
        assert!(
            lines[3].contains("total") && lines[3].contains("656.0 KiB"),
            "{text}"
        );
        assert_eq!(report.total().rss, 2 * 1756 * 1024);
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn a_missing_process_is_a_clear_error() {
        let err = MemoryUsage::of(Pid::from_raw(i32::MAX)).unwrap_err();
        assert!(
            matches!(err, ShmError::Proc { pid, .. } if pid.as_raw() == i32::MAX),
            "{err:?}"
        );
    }
}
