//! Anonymous shared memory: a `memfd`, its memory reserved up front.
//!
//! `memmap2`'s `map_anon` is `MAP_PRIVATE`: after `fork` each process writes
//! its own copy-on-write pages and the parent never sees the workers' writes.
//! A memfd mapped with `MmapMut::map_mut` is `MAP_SHARED`, so every process
//! forked after the mapping sees every write. The memfd has no name in any
//! file system (nothing appears in `/dev/shm`, nothing is left behind if every
//! process is killed): its memory is freed when the last mapping and the last
//! descriptor go away. We close the descriptor as soon as the memory is
//! mapped, so only mappings keep it alive.
//!
//! Memory must be there before a worker needs it. Without that, pages are
//! allocated on first touch, and a machine that runs out half-way through
//! a fill kills the unlucky worker (`SIGBUS`, or the OOM killer); with it,
//! the shortage is an error at creation. A new array gets its memory by
//! being populated in bulk on several threads (`MADV_POPULATE_WRITE`, see
//! `prefault.rs`), which allocates, zeroes and maps every page, and reports
//! a shortage as `ENOMEM`. On kernels before 5.14, which lack it, the memory
//! is reserved with `fallocate` instead, one thread, in [`CHUNK`]s (measured
//! here: about 0.2 s per GiB, 4.7 GB/s, after which the first touch of each
//! page still has to zero it), and the pages are then touched in bulk.

use std::fs::File;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::error::ShmError;
use crate::units::ByteSize;

/// Reserve in chunks so that a signal interrupting `fallocate` (`EINTR`)
/// costs a retry of one chunk, not of everything reserved so far.
const CHUNK: u64 = 1 << 30;

/// Creates a memfd of `len` bytes, all of them reserved, named `name` (the
/// name shows in `/proc/<pid>/maps` as `/memfd:<name> (deleted)`).
pub(crate) fn create_reserved(name: &str, len: u64) -> Result<File, ShmError> {
    let file = create(name, len)?;
    reserve_all(&file, len)?;
    Ok(file)
}

/// Creates a memfd of `len` bytes named `name`, with no memory allocated
/// yet: its pages are holes until populated, reserved or touched.
pub(crate) fn create(name: &str, len: u64) -> Result<File, ShmError> {
    let name = std::ffi::CString::new(name.replace('\0', " ")).unwrap_or_default();
    // MFD_NOEXEC_SEAL: the memory can never be executed (and newer kernels
    // warn about memfds created without saying so).
    let noexec = MFdFlags::from_bits_retain(libc::MFD_NOEXEC_SEAL as _);
    let fd = match memfd_create(name.as_c_str(), MFdFlags::MFD_CLOEXEC | noexec) {
        // Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
        Err(Errno::EINVAL) => memfd_create(name.as_c_str(), MFdFlags::MFD_CLOEXEC),
        other => other,
    }
    .map_err(|source| ShmError::Os {
        call: "memfd_create",
        cause: source,
    })?;
    let file = File::from(fd);
    signed(len)?;
    file.set_len(len).map_err(|e| ShmError::Reserve {
        size: ByteSize(len),
        what: "an anonymous shared array".into(),
        cause: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    Ok(file)
}

/// Reserves all of the memfd `file` of `len` bytes made by [`create`]
/// (`fallocate`, in [`CHUNK`]s).
pub(crate) fn reserve_all(file: &File, len: u64) -> Result<(), ShmError> {
    reserve(
        file,
        0,
        signed(len)?,
        CHUNK as i64,
        "an anonymous shared array",
    )?;
    Ok(())
}

/// `len` as the `off_t` the kernel takes.
fn signed(len: u64) -> Result<i64, ShmError> {
    i64::try_from(len).map_err(|_| ShmError::Reserve {
        size: ByteSize(len),
        what: "an anonymous shared array".into(),
        cause: Errno::EFBIG,
    })
}

/// Reserves `[offset, offset + len)` of `file` with `fallocate`, `chunk`
/// bytes per call, extending the file if needed. Returns `Ok(false)` if the
/// file system cannot reserve space (`EOPNOTSUPP`), after extending the file
/// with `set_len` instead.
pub(crate) fn reserve(
    file: &File,
    offset: i64,
    len: i64,
    chunk: i64,
    what: &str,
) -> Result<bool, ShmError> {
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let chunk = (end - at).min(chunk);
        match fallocate(file.as_fd(), FallocateFlags::empty(), at, chunk) {
            Ok(()) => at += chunk,
            Err(Errno::EINTR) => continue,
            Err(Errno::EOPNOTSUPP) => {
                let current = file.metadata().map(|m| m.len()).unwrap_or(0);
                if current < end as u64 {
                    file.set_len(end as u64).map_err(|e| ShmError::Reserve {
                        size: ByteSize(len as u64),
                        what: what.to_owned(),
                        cause: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    })?;
                }
                return Ok(false);
            }
            Err(source) => {
                return Err(ShmError::Reserve {
                    size: ByteSize(len as u64),
                    what: what.to_owned(),
                    cause: source,
                });
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    #[cfg_attr(miri, ignore = "memfd_create and fallocate")]
    fn a_memfd_has_no_memory_until_reserved_and_all_of_it_after() {
        let len = 8 << 20;
        let file = create("forkpool-shm-test", len).unwrap();
        assert_eq!(file.metadata().unwrap().len(), len);
        assert_eq!(
            file.metadata().unwrap().blocks(),
            0,
            "nothing allocated yet"
        );
        reserve_all(&file, len).unwrap();
        let reserved = create_reserved("forkpool-shm-test", len).unwrap();
        for file in [&file, &reserved] {
            // `st_blocks` counts 512-byte blocks actually allocated to the memfd.
            let allocated = file.metadata().unwrap().blocks() * 512;
            assert!(allocated >= len, "only {allocated} bytes allocated");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd_create and fallocate")]
    fn an_empty_memfd_is_fine() {
        let file = create_reserved("forkpool-shm-test", 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
    }
}
