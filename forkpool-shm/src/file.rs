//! File-backed arrays: raw files (what `np.memmap` reads and writes) and
//! `.npy` files (what `np.load(path, mmap_mode='r+')` opens).
//!
//! The file is mapped `MAP_SHARED`: its pages are the array, every process
//! forked after the mapping sees every write, and the kernel writes dirty
//! pages back and evicts clean ones as it needs, so an array can be larger
//! than RAM (no memory check applies). Disk space is reserved with
//! `fallocate` when the file is created, so a full disk is an error at
//! creation rather than a `SIGBUS` in a worker.
//!
//! Opening a file is `unsafe` for the reason `memmap2::MmapMut::map_mut` is:
//! the file could be truncated or rewritten by another program while mapped.
//! The array's lock and row claims live in an anonymous page made at open,
//! so they are shared with processes forked afterwards, not with a second,
//! separate open of the same path (which is why a `LockedArray` or a
//! `PartitionedArray` must not be opened twice; a `SharedArray`, which has
//! neither, may be, as `np.memmap` is in each Python process).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::element::Element;
use crate::error::ShmError;
use crate::memfd;
use crate::npy;
use crate::region::Region;
use crate::shape::Layout;
use crate::units::ByteSize;
use crate::{LockedArray, PartitionedArray, SharedArray};

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        path: path.to_owned(),
        op,
        cause: source,
    }
}

/// Creates (or truncates) `path`, writes `prefix` (a `.npy` header, or
/// nothing), reserves `layout.bytes` of data after it, and maps the file.
///
/// # Safety
///
/// As for the public file constructors.
unsafe fn create_region(
    path: &Path,
    descr: &str,
    elem_size: usize,
    layout: Layout,
    prefix: &[u8],
) -> Result<Region, ShmError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path, "create the file"))?;
    let made = (|| {
        file.write_all(prefix)
            .map_err(io(path, "write the .npy header"))?;
        let (offset, len) = (prefix.len() as i64, layout.bytes as i64);
        if len > 0 {
            check_disk_space(path, layout.bytes)?;
            // One call: a file system reserves all of it or fails.
            memfd::reserve(&file, offset, len, len, &path.display().to_string())?;
        }
        let data_offset = prefix.len() as u64;
        // SAFETY: forwarded from the caller.
        unsafe { Region::file(&file, path, descr, elem_size, layout, data_offset) }
    })();
    if made.is_err() {
        // Do not leave a half-made file behind.
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Fails with `ENOSPC` at once if the file system holding `path` has less
/// than `bytes` free, rather than filling the disk before failing.
fn check_disk_space(path: &Path, bytes: u64) -> Result<(), ShmError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(stat) = nix::sys::statvfs::statvfs(dir) {
        let free = stat.blocks_available() * stat.fragment_size();
        if bytes > free {
            return Err(ShmError::Reserve {
                size: ByteSize(bytes),
                what: format!(
                    "{} ({} free on its file system)",
                    path.display(),
                    ByteSize(free)
                ),
                cause: nix::errno::Errno::ENOSPC,
            });
        }
    }
    Ok(())
}

/// Opens `path` read-write, checks that it is `data_offset` bytes of header
/// plus exactly `layout.bytes` of data, and maps it.
///
/// # Safety
///
/// As for the public file constructors.
unsafe fn open_region(
    file: &File,
    path: &Path,
    descr: &str,
    elem: &'static str,
    elem_size: usize,
    layout: Layout,
    data_offset: u64,
) -> Result<Region, ShmError> {
    let actual = file.metadata().map_err(io(path, "stat the file"))?.len();
    let expected = data_offset + layout.bytes;
    if actual != expected {
        let header = if data_offset > 0 {
            format!(" after a {data_offset}-byte header")
        } else {
            String::new()
        };
        let detail = if actual < expected {
            format!(
                "{header}: the file is too short (truncated, or written with another shape or \
                 element type)"
            )
        } else {
            format!(
                "{header}: the file has {} bytes more than the shape needs (wrong shape or \
                 element type?)",
                actual - expected
            )
        };
        return Err(ShmError::FileLength {
            path: path.to_owned(),
            shape: layout.shape.to_vec(),
            elem,
            expected,
            actual,
            detail,
        });
    }
    // SAFETY: forwarded from the caller.
    unsafe { Region::file(file, path, descr, elem_size, layout, data_offset) }
}

fn open_rw(path: &Path) -> Result<File, ShmError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path, "open the file for reading and writing"))
}

/// # Safety
///
/// As for [`SharedArray::create_file`].
unsafe fn create_raw<T: Element>(path: &Path, shape: &[usize]) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    // SAFETY: forwarded from the caller.
    unsafe { create_region(path, T::NPY_DESCR, size_of::<T>(), layout, &[]) }
}

/// # Safety
///
/// As for [`SharedArray::open_file`].
unsafe fn open_raw<T: Element>(path: &Path, shape: &[usize]) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    let file = open_rw(path)?;
    // SAFETY: forwarded from the caller.
    unsafe {
        open_region(
            &file,
            path,
            T::NPY_DESCR,
            T::NAME,
            size_of::<T>(),
            layout,
            0,
        )
    }
}

/// # Safety
///
/// As for [`SharedArray::create_npy`].
unsafe fn create_npy<T: Element>(path: &Path, shape: &[usize]) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    let header = npy::header_bytes(path, T::NPY_DESCR, shape)?;
    // SAFETY: forwarded from the caller.
    unsafe { create_region(path, T::NPY_DESCR, size_of::<T>(), layout, &header) }
}

/// # Safety
///
/// As for [`SharedArray::open_npy`].
unsafe fn open_npy<T: Element>(path: &Path) -> Result<Region, ShmError> {
    let file = open_rw(path)?;
    let header = npy::read_header::<T>(&file, path)?;
    let layout = Layout::new(&header.shape, size_of::<T>())?;
    let offset = header.data_offset;
    // SAFETY: forwarded from the caller.
    unsafe {
        open_region(
            &file,
            path,
            &header.descr,
            T::NAME,
            size_of::<T>(),
            layout,
            offset,
        )
    }
}

macro_rules! file_constructors {
    ($ty:ident, $wrap:expr, $use_it:literal, $separate_opens:literal) => {
        impl<T: Element> $ty<T> {
            #[doc = concat!("Creates a raw file at `path` holding a zero-filled array of `shape`, and maps it as a `", stringify!($ty), "`.")]
            ///
            /// The file holds the elements and nothing else, in row-major
            /// order and native (little-endian) byte order: what
            /// `np.memmap(path, dtype=..., mode='r+', shape=...)` reads. An
            /// existing file is truncated first. Disk space for the whole
            /// array is reserved (`fallocate`) before this returns, where the
            /// file system supports it; memory is not checked, since the
            /// kernel pages file-backed arrays to disk.
            ///
            /// # Safety
            ///
            /// The file's contents are the array's memory. While any process
            /// maps it, the file must not be truncated (access past the end
            /// raises `SIGBUS`), and must not be modified other than through
            /// this array's handles (and those of processes forked after this
            /// call), not by another program, numpy included.
            #[doc = $separate_opens]
            ///
            /// # Errors
            ///
            /// [`ShmError::Io`] if the file cannot be created or mapped,
            /// [`ShmError::Reserve`] if the disk is too small,
            /// [`ShmError::InvalidShape`] for an impossible shape.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use forkpool_shm::", stringify!($ty), ";")]
            /// let dir = tempfile::tempdir()?;
            /// let path = dir.path().join("data.f64");
            /// // SAFETY: the file is new, and only this program uses it.
            #[doc = concat!("let array = unsafe { ", stringify!($ty), "::<f64>::create_file(&path, &[100, 10])? };")]
            #[doc = $use_it]
            /// array.flush()?;
            /// assert_eq!(std::fs::metadata(&path)?.len(), 100 * 10 * 8);
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub unsafe fn create_file(
                path: impl AsRef<Path>,
                shape: &[usize],
            ) -> Result<Self, ShmError> {
                // SAFETY: forwarded from the caller.
                let region = unsafe { create_raw::<T>(path.as_ref(), shape)? };
                Ok($wrap(SharedArray::from_region(region)))
            }

            /// Opens an existing raw file (as `np.memmap` writes it) holding
            /// an array of `shape`, and maps it.
            ///
            /// # Safety
            ///
            #[doc = concat!("As for [`create_file`](", stringify!($ty), "::create_file).")]
            ///
            /// # Errors
            ///
            /// [`ShmError::FileLength`] if the file's length is not exactly
            /// `shape` times the element size (naming both, and whether the
            /// file is too short or too long); [`ShmError::Io`] if it cannot
            /// be opened read-write or mapped.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use forkpool_shm::", stringify!($ty), ";")]
            /// let dir = tempfile::tempdir()?;
            /// let path = dir.path().join("data.u8");
            /// std::fs::write(&path, [7u8; 12])?;
            /// // SAFETY: only this program uses the file.
            #[doc = concat!("let array = unsafe { ", stringify!($ty), "::<u8>::open_file(&path, &[3, 4])? };")]
            /// assert_eq!(array.shape(), &[3, 4]);
            /// // The wrong shape is a clear error:
            /// // SAFETY: as above.
            #[doc = concat!("let err = unsafe { ", stringify!($ty), "::<u8>::open_file(&path, &[4, 4]) }.unwrap_err();")]
            /// assert!(err.to_string().contains("too short"));
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub unsafe fn open_file(
                path: impl AsRef<Path>,
                shape: &[usize],
            ) -> Result<Self, ShmError> {
                // SAFETY: forwarded from the caller.
                let region = unsafe { open_raw::<T>(path.as_ref(), shape)? };
                Ok($wrap(SharedArray::from_region(region)))
            }

            /// Creates a `.npy` file at `path` holding a zero-filled, C-order
            /// array of `shape`, and maps it: numpy opens it with
            /// `np.load(path, mmap_mode='r+')` and sees what Rust writes.
            /// An existing file is truncated first; disk space is reserved as
            #[doc = concat!("for [`create_file`](", stringify!($ty), "::create_file).")]
            ///
            /// # Safety
            ///
            #[doc = concat!("As for [`create_file`](", stringify!($ty), "::create_file).")]
            ///
            /// # Errors
            ///
            #[doc = concat!("As for [`create_file`](", stringify!($ty), "::create_file).")]
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use forkpool_shm::", stringify!($ty), ";")]
            /// let dir = tempfile::tempdir()?;
            /// let path = dir.path().join("data.npy");
            /// // SAFETY: the file is new, and only this program uses it.
            #[doc = concat!("let array = unsafe { ", stringify!($ty), "::<f64>::create_npy(&path, &[100, 10])? };")]
            #[doc = $use_it]
            /// array.flush()?;
            /// assert!(std::fs::read(&path)?.starts_with(b"\x93NUMPY"));
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub unsafe fn create_npy(
                path: impl AsRef<Path>,
                shape: &[usize],
            ) -> Result<Self, ShmError> {
                // SAFETY: forwarded from the caller.
                let region = unsafe { create_npy::<T>(path.as_ref(), shape)? };
                Ok($wrap(SharedArray::from_region(region)))
            }

            /// Opens a `.npy` file (as `np.save` or
            /// `np.lib.format.open_memmap` write it) and maps it; the shape
            #[doc = concat!("comes from the file (check it with [`expect_shape`](", stringify!($ty), "::expect_shape)).")]
            ///
            /// The element type must match the file's dtype exactly
            /// (`'<f8'` for `f64`...), in C order.
            ///
            /// # Safety
            ///
            #[doc = concat!("As for [`create_file`](", stringify!($ty), "::create_file).")]
            ///
            /// # Errors
            ///
            /// - [`ShmError::DtypeMismatch`] if the file holds another
            ///   element type (naming it, and the type to open it as);
            /// - [`ShmError::NpyHeader`] if the header is truncated,
            ///   malformed, of an unknown version, or in Fortran order;
            /// - [`ShmError::FileLength`] if the data is shorter or longer
            ///   than the header's shape needs;
            /// - [`ShmError::Io`] if the file cannot be opened read-write.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("use forkpool_shm::{", stringify!($ty), ", ShmError};")]
            /// let dir = tempfile::tempdir()?;
            /// let path = dir.path().join("data.npy");
            /// // SAFETY: the file is new, and only this program uses it.
            #[doc = concat!("drop(unsafe { ", stringify!($ty), "::<f32>::create_npy(&path, &[4, 2])? });")]
            /// // SAFETY: as above.
            #[doc = concat!("let array = unsafe { ", stringify!($ty), "::<f32>::open_npy(&path)? }.expect_shape(&[4, 2])?;")]
            /// assert_eq!(array.len(), 8);
            /// // The wrong element type is a clear error:
            /// // SAFETY: as above.
            #[doc = concat!("let err = unsafe { ", stringify!($ty), "::<f64>::open_npy(&path) }.unwrap_err();")]
            /// assert!(matches!(err, ShmError::DtypeMismatch { .. }));
            /// assert!(err.to_string().contains("open it as an array of f32"));
            /// # Ok::<(), Box<dyn std::error::Error>>(())
            /// ```
            pub unsafe fn open_npy(path: impl AsRef<Path>) -> Result<Self, ShmError> {
                // SAFETY: forwarded from the caller.
                let region = unsafe { open_npy::<T>(path.as_ref())? };
                Ok($wrap(SharedArray::from_region(region)))
            }
        }
    };
}

file_constructors!(
    SharedArray,
    std::convert::identity,
    "array.fill_row(0, 1.5);",
    "Several `open_*` of the same path (one per process, as each Python \
     process calls `np.memmap`) are fine: a `SharedArray` accesses its \
     elements with atomics and has no lock or claim table to share. A second \
     `create_*` of the path would truncate it under the first."
);
file_constructors!(
    LockedArray,
    LockedArray::from_shared,
    "array.lock()?.row_mut(0).fill(1.5);",
    "Nor through another `create_*`/`open_*` of the same path: that gets \
     a lock of its own, which would not exclude this one's holders."
);
file_constructors!(
    PartitionedArray,
    PartitionedArray::from_shared,
    "array.claim_rows(0..1)?.fill(1.5);",
    "Nor through another `create_*`/`open_*` of the same path: that gets \
     a claim table of its own, so two processes could claim the same rows."
);
