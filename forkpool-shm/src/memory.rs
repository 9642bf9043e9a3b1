//! How much memory an anonymous shared array can have: `MemAvailable`, free
//! swap and cgroup limits, checked before any allocation.
//!
//! Anonymous shared memory (a memfd) lives in RAM, or in swap if there is any.
//! On a machine without swap, asking for more than `MemAvailable` ends with
//! the OOM killer or, for pages touched late, `SIGBUS` in whichever worker
//! touches them; the source notes show Python's `MemoryError` on Linux here,
//! where a Mac would page to disk. We check first and fail with a message that
//! names the sizes and the file-backed alternative.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ShmError;
use crate::units::ByteSize;

/// The memory figures of `/proc/meminfo` that bound shared memory.
///
/// # Examples
///
/// ```
/// let info = forkpool_shm::MemInfo::read()?;
/// assert!(info.mem_available <= info.mem_total);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemInfo {
    /// `MemTotal`, in bytes.
    pub mem_total: u64,
    /// `MemAvailable`: the kernel's estimate of memory available for new work
    /// without swapping, in bytes.
    pub mem_available: u64,
    /// `SwapTotal`, in bytes.
    pub swap_total: u64,
    /// `SwapFree`, in bytes.
    pub swap_free: u64,
    /// `Shmem`: shared memory (tmpfs, memfd, shared anonymous) in use, in bytes.
    pub shmem: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo`.
    ///
    /// # Errors
    ///
    /// [`ShmError::Proc`] if the file cannot be read, [`ShmError::ProcFormat`]
    /// if a field is missing (read with the `procfs` crate).
    ///
    /// # Examples
    ///
    /// ```
    /// let info = forkpool_shm::MemInfo::read()?;
    /// println!("{} available", forkpool_shm::ByteSize(info.mem_available));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn read() -> Result<MemInfo, ShmError> {
        let path = Path::new("/proc/meminfo");
        let info = read_proc::<procfs::Meminfo>(nix::unistd::Pid::this(), path)?;
        Self::from_procfs(&info).map_err(|reason| ShmError::ProcFormat {
            path: path.to_owned(),
            reason,
        })
    }

    /// The figures we use of what `procfs` read (in bytes); `MemAvailable`
    /// (Linux 3.14) and `Shmem` (2.6.32) are optional there.
    fn from_procfs(info: &procfs::Meminfo) -> Result<MemInfo, String> {
        let required =
            |value: Option<u64>, name: &str| value.ok_or_else(|| format!("no `{name}` line"));
        Ok(MemInfo {
            mem_total: info.mem_total,
            mem_available: required(info.mem_available, "MemAvailable")?,
            swap_total: info.swap_total,
            swap_free: info.swap_free,
            shmem: required(info.shmem, "Shmem")?,
        })
    }
}

/// Reads the `/proc` file `path` of process `pid` and parses it with
/// `procfs`: [`ShmError::Proc`] with the OS's error if it cannot be read
/// (`NotFound` when the process has exited, `PermissionDenied` for another
/// user's), [`ShmError::ProcFormat`] for contents not understood.
pub(crate) fn read_proc<T: procfs::FromBufRead>(
    pid: nix::unistd::Pid,
    path: &Path,
) -> Result<T, ShmError> {
    let text = fs::read(path).map_err(|source| ShmError::Proc {
        pid,
        path: path.to_owned(),
        source,
    })?;
    T::from_buf_read(text.as_slice()).map_err(|e| ShmError::ProcFormat {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The memory an anonymous shared array can have now, and what bounds it.
///
/// # Examples
///
/// ```
/// let room = forkpool_shm::available_memory()?;
/// println!("{} available ({})", room.bytes, room.limit);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Available {
    /// Bytes available.
    pub bytes: ByteSize,
    /// What bounds them, in words (`"MemAvailable; no swap"`).
    pub limit: String,
}

/// The memory an anonymous shared array can have now: `MemAvailable` plus
/// free swap, or less if this process's cgroup (v1 or v2) has a lower limit.
///
/// # Errors
///
/// [`ShmError::Proc`] or [`ShmError::ProcFormat`] if `/proc/meminfo` cannot
/// be read or understood. Cgroup files that cannot be read are ignored.
///
/// # Examples
///
/// ```
/// let room = forkpool_shm::available_memory()?;
/// assert!(room.bytes.as_u64() > 0);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub fn available_memory() -> Result<Available, ShmError> {
    let info = MemInfo::read()?;
    let mut bytes = info.mem_available.saturating_add(info.swap_free);
    let mut limit = if info.swap_total == 0 {
        format!("MemAvailable {}; no swap", ByteSize(info.mem_available))
    } else {
        format!(
            "MemAvailable {} + free swap {}",
            ByteSize(info.mem_available),
            ByteSize(info.swap_free)
        )
    };
    if let Some((room, path)) = cgroup_room()
        && room < bytes
    {
        bytes = room;
        limit = format!("cgroup limit, {}", path.display());
    }
    Ok(Available {
        bytes: ByteSize(bytes),
        limit,
    })
}

/// Fails with [`ShmError::OutOfMemory`] if `requested` bytes of anonymous
/// shared memory are more than [`available_memory`].
pub(crate) fn check_available(requested: u64) -> Result<(), ShmError> {
    let room = available_memory()?;
    if requested > room.bytes.0 {
        return Err(ShmError::OutOfMemory {
            requested: ByteSize(requested),
            available: room.bytes,
            limit: room.limit,
        });
    }
    Ok(())
}

/// Room left under this process's cgroup memory limit, if it has one: the
/// limit minus current usage, and the file that sets the limit.
fn cgroup_room() -> Option<(u64, PathBuf)> {
    let groups = procfs::process::Process::myself().ok()?.cgroups().ok()?;
    let mut best: Option<(u64, PathBuf)> = None;
    for group in groups.0 {
        let rel = group.pathname.trim_start_matches('/');
        let candidate = if group.controllers.is_empty() {
            // cgroup v2: the unified hierarchy.
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            room_in(&dir.join("memory.max"), &dir.join("memory.current"))
        } else if group.controllers.iter().any(|c| c == "memory") {
            // cgroup v1: the memory controller's own hierarchy.
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            room_in(
                &dir.join("memory.limit_in_bytes"),
                &dir.join("memory.usage_in_bytes"),
            )
        } else {
            None
        };
        if let Some(found) = candidate
            && best.as_ref().is_none_or(|(room, _)| found.0 < *room)
        {
            best = Some(found);
        }
    }
    best
}

fn room_in(limit_file: &Path, usage_file: &Path) -> Option<(u64, PathBuf)> {
    let limit = fs::read_to_string(limit_file).ok()?;
    let limit: u64 = limit.trim().parse().ok()?; // "max" (v2, no limit) does not parse
    if limit >= 1 << 60 {
        return None; // v1's "no limit" is a huge number
    }
    let usage: u64 = fs::read_to_string(usage_file).ok()?.trim().parse().ok()?;
    Some((limit.saturating_sub(usage), limit_file.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_in_bytes() {
        use procfs::FromBufRead;
        let fields = |available: &str| {
            format!(
                "MemTotal: 24684096 kB\nMemFree: 23000000 kB\n{available}Buffers: 0 kB\n\
                 Cached: 0 kB\nSwapCached: 0 kB\nActive: 0 kB\nInactive: 0 kB\n\
                 SwapTotal: 0 kB\nSwapFree: 0 kB\nDirty: 0 kB\nWriteback: 0 kB\n\
                 Mapped: 0 kB\nShmem: 8788 kB\nSlab: 0 kB\nKernelStack: 0 kB\n\
                 PageTables: 0 kB\nNFS_Unstable: 0 kB\nBounce: 0 kB\nWritebackTmp: 0 kB\n\
                 CommitLimit: 0 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\n\
                 VmallocUsed: 0 kB\nVmallocChunk: 0 kB\nAnonPages: 0 kB\n"
            )
        };
        let parse = |text: &str| procfs::Meminfo::from_buf_read(text.as_bytes()).unwrap();
        let info = MemInfo::from_procfs(&parse(&fields("MemAvailable: 24434852 kB\n"))).unwrap();
        assert_eq!(info.mem_total, 24684096 * 1024);
        assert_eq!(info.mem_available, 24434852 * 1024);
        assert_eq!(info.swap_total, 0);
        assert_eq!(info.shmem, 8788 * 1024);
        let err = MemInfo::from_procfs(&parse(&fields(""))).unwrap_err();
        assert!(err.contains("MemAvailable"), "{err}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn checks_against_the_real_machine() {
        let room = available_memory().unwrap();
        assert!(room.bytes.0 > 0);
        check_available(1 << 20).unwrap();
        let asked = room.bytes.0 + (1 << 30);
        let err = check_available(asked).unwrap_err();
        let text = err.to_string();
        match err {
            ShmError::OutOfMemory { requested, .. } => assert_eq!(requested, ByteSize(asked)),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        assert!(text.contains(&ByteSize(asked).to_string()), "{text}");
        assert!(text.contains("create_file"), "{text}");
    }
}
