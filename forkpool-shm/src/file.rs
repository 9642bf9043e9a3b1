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
//! the file could be truncated or rewritten by another program while mapped
//! (see [`ArrayOptions`]). The array's lock and row claims live in an
//! anonymous page made at open, so they are shared with processes forked
//! afterwards, not with a second, separate open of the same path.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::SharedArray;
use crate::element::Element;
use crate::error::{ShmError, io_error};
use crate::memfd;
use crate::mode::Mode;
use crate::npy;
use crate::prefault::Access;
use crate::region::Region;
use crate::shape::Layout;
use crate::units::ByteSize;

/// A [`ShmError::Refused`] for `path`.
fn refuse(path: &Path, op: &'static str, kind: ErrorKind, reason: String) -> ShmError {
    let path = path.to_owned();
    ShmError::Refused {
        path,
        op,
        kind,
        reason,
    }
}

/// How an array is made or opened: one builder for anonymous memory, raw
/// files and `.npy` files, in the manner of memmap2's `MmapOptions` (the
/// settings first, then one call acts). The array's element type and
/// [`Mode`] are those of the `SharedArray<T, M>` asked for.
///
/// | numpy | here |
/// |---|---|
/// | `np.zeros(shape)` in shared memory | [`anonymous`](Self::anonymous) (or [`SharedArray::new`]) |
/// | `np.memmap(path, mode='w+', shape=...)` | [`create_file`](Self::create_file) |
/// | `np.memmap(path, mode='r+')` / `mode='r'` | [`open_file`](Self::open_file), with [`read_only`](Self::read_only) |
/// | `np.lib.format.open_memmap(path, mode='w+', ...)` | [`create_npy`](Self::create_npy) |
/// | `np.load(path, mmap_mode='r+')` / `'r'` | [`open_npy`](Self::open_npy), with [`read_only`](Self::read_only) |
/// | `np.save(path, array)` | [`save_npy`](Self::save_npy) (or [`SharedArray::save_npy`]) |
///
/// By default a file is created only where nothing exists: an existing
/// file, link, FIFO or device is an error and is left untouched. With
/// [`overwrite`](Self::overwrite), an existing *regular* file is replaced
/// atomically: the new file is made and reserved under a temporary name in
/// the same directory, then renamed over the old one, so the old file stays
/// whole until the new one is complete (processes that have the old one
/// mapped keep the old data; the new file gets the old one's permission
/// bits). Symbolic links are never written through unless
/// [`follow_symlinks`](Self::follow_symlinks) says so; FIFOs, devices,
/// sockets and directories are never replaced.
///
/// # Why opening a file is `unsafe`
///
/// A file's contents are the array's memory. While any process maps it, the
/// file must not be truncated (access past the end raises `SIGBUS`) and must
/// not be modified other than through this array's handles (and those of
/// processes forked after the call): not by another program, numpy
/// included. For a [`Locked`](crate::Locked) or
/// [`Partitioned`](crate::Partitioned) array, not through another
/// create or open of the same path either: that gets a lock or claim table
/// of its own (they live in an anonymous page made at open), which would
/// not exclude this one's holders. Several opens of an
/// [`Atomic`](crate::Atomic) array are fine, as `np.memmap` in each Python
/// process is.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{ArrayOptions, Locked, SharedArray};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("data.npy");
/// // SAFETY: a fresh file that only this program uses.
/// let first: SharedArray<f64> = unsafe { ArrayOptions::new().create_npy(&path, &[4])? };
/// first.set(0, 1.0);
/// // A second plain create of the same path is refused, and the first
/// // array's data is untouched:
/// // SAFETY: as above.
/// let err = unsafe { ArrayOptions::new().create_npy::<f64, Locked>(&path, &[4]) }.unwrap_err();
/// assert!(err.to_string().contains("already exists"), "{err}");
/// drop(first);
/// // Replacing it must be asked for:
/// // SAFETY: as above.
/// let second: SharedArray<f64, Locked> =
///     unsafe { ArrayOptions::new().overwrite(true).create_npy(&path, &[8])? };
/// second.with_lock(|data| data.row_mut(7).fill(1.5))?;
/// assert_eq!(second.len(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayOptions {
    overwrite: bool,
    follow_symlinks: bool,
    read_only: bool,
    populate: bool,
}

impl Default for ArrayOptions {
    fn default() -> Self {
        ArrayOptions {
            overwrite: false,
            follow_symlinks: false,
            read_only: false,
            populate: true,
        }
    }
}

impl ArrayOptions {
    /// The default: create only where nothing exists, never follow a link,
    /// open read-write, populate anonymous memory.
    ///
    /// # Examples
    ///
    /// See [`ArrayOptions`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an existing regular file at the path is replaced (atomically,
    /// by rename) by `create_*` and `save_npy` instead of being an error.
    ///
    /// # Examples
    ///
    /// See [`ArrayOptions`].
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Whether a symbolic link at the path is followed, so that its target
    /// is created (or, with [`overwrite`](Self::overwrite), replaced) and
    /// the link kept, instead of being an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (target, link) = (dir.path().join("real.npy"), dir.path().join("link.npy"));
    /// std::os::unix::fs::symlink(&target, &link)?;
    /// // SAFETY: fresh files that only this program uses.
    /// assert!(unsafe { ArrayOptions::new().create_npy::<u8, _>(&link, &[2]) }
    ///     .map(|a: SharedArray<u8>| a)
    ///     .is_err());
    /// // SAFETY: as above.
    /// let array: SharedArray<u8> =
    ///     unsafe { ArrayOptions::new().follow_symlinks(true).create_npy(&link, &[2])? };
    /// assert!(target.is_file() && link.is_symlink());
    /// # drop(array);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// Whether `open_file`/`open_npy` open the file `O_RDONLY` and map it
    /// `PROT_READ`, as `np.memmap(path, mode='r')` and
    /// `np.load(path, mmap_mode='r')` do, so that neither this process nor
    /// those it forks can change it; works on files nobody may write (mode
    /// `0444`). Only for [`Atomic`](crate::Atomic) arrays: the methods that
    /// write panic (as numpy raises "assignment destination is read-only"),
    /// and `prefault` returns [`ShmError::ReadOnly`]; a lock or a claim,
    /// which hand out `&mut [T]`, are refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// use forkpool_shm::{ArrayOptions, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("frozen.i32");
    /// std::fs::write(&path, [1i32, 2, 3].map(i32::to_le_bytes).concat())?;
    /// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
    /// // SAFETY: nothing truncates or writes the file while it is mapped.
    /// let array: SharedArray<i32> =
    ///     unsafe { ArrayOptions::new().read_only(true).open_file(&path, &[3])? };
    /// assert_eq!(array.to_vec()?, [1, 2, 3]);
    /// assert!(array.is_read_only());
    /// let write = std::panic::AssertUnwindSafe(|| array.set(0, 1));
    /// assert!(std::panic::catch_unwind(write).is_err());
    /// // A read-write open of a file nobody may write is refused, even as root:
    /// // SAFETY: as above.
    /// assert!(unsafe { ArrayOptions::new().open_file::<i32, _>(&path, &[3]) }
    ///     .map(|a: SharedArray<i32>| a)
    ///     .is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether the array's pages are mapped into this process when it is
    /// made or opened, in bulk (like memmap2's `populate`): for an anonymous
    /// array, allocated, zeroed and mapped on one thread per core (the
    /// default: no worker can then die half-way through a fill for want of
    /// memory, and this process takes no page fault); without it the memory
    /// is reserved (`fallocate`) and each page mapped on first touch. For a
    /// file, read from disk and mapped now (`MADV_POPULATE_READ`/`_WRITE`);
    /// without it, on first touch.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, SharedArray};
    /// let lazy: SharedArray<f64> = ArrayOptions::new().populate(false).anonymous(&[1000, 100])?;
    /// assert_eq!(lazy.get(99_999), 0.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// A zero-filled anonymous shared array of `shape`: a memfd mapped
    /// `MAP_SHARED`, nothing in `/dev/shm`, freed when the last process that
    /// maps it drops it or dies. See [`SharedArray::new`].
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`].
    ///
    /// # Examples
    ///
    /// See [`populate`](Self::populate).
    pub fn anonymous<T: Element, M: Mode>(
        &self,
        shape: &[usize],
    ) -> Result<SharedArray<T, M>, ShmError> {
        let region = Region::anonymous::<T>(shape, None, self.populate)?;
        Ok(SharedArray::from_region(region))
    }

    /// Creates a raw file at `path` holding a zero-filled array of `shape`
    /// (the elements and nothing else, row-major, native little-endian:
    /// what `np.memmap(path, dtype=..., mode='r+', shape=...)` reads), and
    /// maps it.
    ///
    /// Disk space for the whole array is reserved (`fallocate`) before this
    /// returns, where the file system supports it, so a full disk is an
    /// error here rather than a `SIGBUS` in a worker; memory is not checked,
    /// since the kernel pages file-backed arrays to disk. The file is made
    /// under a temporary name in the same directory and renamed into place
    /// once complete, so a failure leaves nothing behind.
    ///
    /// # Safety
    ///
    /// See [`ArrayOptions`]: while any process maps the file, nothing may
    /// truncate it or change it other than through this array's handles
    /// (and those of processes forked after this call); for a `Locked` or
    /// `Partitioned` array, not through another create or open of the same
    /// path either.
    ///
    /// # Errors
    ///
    /// [`ShmError::Refused`] if something exists at `path` (kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists), saying what is
    /// there) and these options do not allow replacing it; [`ShmError::Io`]
    /// if the file cannot be created or mapped; [`ShmError::Reserve`] if the disk is too
    /// small; [`ShmError::InvalidShape`] for an impossible shape.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, Partitioned, SharedArray};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.f64");
    /// // SAFETY: the file is new, and only this program uses it.
    /// let array: SharedArray<f64, Partitioned> =
    ///     unsafe { ArrayOptions::new().create_file(&path, &[100, 10])? };
    /// array.with_rows_mut(0..1, |row| row.fill(1.5))?;
    /// array.flush()?;
    /// assert_eq!(std::fs::metadata(&path)?.len(), 100 * 10 * 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn create_file<T: Element, M: Mode>(
        &self,
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<SharedArray<T, M>, ShmError> {
        let layout = Layout::new(shape, size_of::<T>())?;
        let path = path.as_ref();
        // SAFETY: forwarded from the caller.
        let region = unsafe { create_region::<T>(self, path, layout, &[])? };
        self.finish(region)
    }

    /// Opens an existing raw file (as `np.memmap` writes it) holding an
    /// array of `shape`, and maps it (read-only with
    /// [`read_only`](Self::read_only)).
    ///
    /// # Safety
    ///
    /// As for [`create_file`](Self::create_file).
    ///
    /// # Errors
    ///
    /// [`ShmError::FileLength`] if the file's length is not exactly `shape`
    /// times the element size (naming both, and whether the file is too
    /// short or too long); [`ShmError::Io`] if it cannot be opened or
    /// mapped; [`ShmError::Refused`] if it is not a regular file, or
    /// (unless read-only) has no write permission bit, even for root.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, SharedArray};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.u8");
    /// std::fs::write(&path, [7u8; 12])?;
    /// // SAFETY: only this program uses the file.
    /// let array: SharedArray<u8> = unsafe { ArrayOptions::new().open_file(&path, &[3, 4])? };
    /// assert_eq!(array.shape(), &[3, 4]);
    /// // The wrong shape is a clear error:
    /// // SAFETY: as above.
    /// let err = unsafe { ArrayOptions::new().open_file::<u8, _>(&path, &[4, 4]) }
    ///     .map(|a: SharedArray<u8>| a)
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("too short"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn open_file<T: Element, M: Mode>(
        &self,
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<SharedArray<T, M>, ShmError> {
        let path = path.as_ref();
        let layout = Layout::new(shape, size_of::<T>())?;
        let file = self.open_existing::<M>(path)?;
        // SAFETY: forwarded from the caller.
        let region = unsafe { open_region::<T>(&file, path, layout, 0, !self.read_only)? };
        self.finish(region)
    }

    /// Creates a `.npy` file at `path` holding a zero-filled, C-order array
    /// of `shape`, and maps it: numpy opens it with
    /// `np.load(path, mmap_mode='r+')` and sees what Rust writes. Disk space
    /// and an existing path are treated as by
    /// [`create_file`](Self::create_file).
    ///
    /// # Safety
    ///
    /// As for [`create_file`](Self::create_file).
    ///
    /// # Errors
    ///
    /// As for [`create_file`](Self::create_file).
    ///
    /// # Examples
    ///
    /// See [`ArrayOptions`].
    pub unsafe fn create_npy<T: Element, M: Mode>(
        &self,
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<SharedArray<T, M>, ShmError> {
        let layout = Layout::new(shape, size_of::<T>())?;
        let header = npy::header_bytes(T::NPY_DESCR, shape);
        // SAFETY: forwarded from the caller.
        let region = unsafe { create_region::<T>(self, path.as_ref(), layout, &header)? };
        self.finish(region)
    }

    /// Opens a `.npy` file (as `np.save` or `np.lib.format.open_memmap`
    /// write it) and maps it (read-only with [`read_only`](Self::read_only));
    /// the shape comes from the file (check it with
    /// [`expect_shape`](SharedArray::expect_shape)).
    ///
    /// The element type must be the file's dtype (`'<f8'` for `f64`, or a
    /// synonym numpy reads the same: `'<d'`, `'float64'`), in C order. The
    /// header is read as numpy reads it, under numpy's limits (at most
    /// 10 000 characters, only Python literals), so a hostile file is an
    /// error, never a hang, a crash or a huge allocation.
    ///
    /// # Safety
    ///
    /// As for [`create_file`](Self::create_file).
    ///
    /// # Errors
    ///
    /// - [`ShmError::DtypeMismatch`] if the file holds another element type
    ///   (naming it, and the type to open it as);
    /// - [`ShmError::NpyHeader`] if the header is truncated, malformed, too
    ///   long, of an unknown version, or in Fortran order;
    /// - [`ShmError::InvalidShape`] if the shape's size overflows (numpy
    ///   refuses such files too);
    /// - [`ShmError::FileLength`] if the data is shorter or longer than the
    ///   header's shape needs;
    /// - [`ShmError::Io`] and [`ShmError::Refused`] as for
    ///   [`open_file`](Self::open_file).
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, SharedArray, ShmError};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.npy");
    /// SharedArray::<f32>::full(&[4, 2], 0.5)?.save_npy(&path)?;
    /// // SAFETY: only this program uses the file.
    /// let array: SharedArray<f32> = unsafe { ArrayOptions::new().open_npy(&path)? };
    /// let array = array.expect_shape(&[4, 2])?;
    /// assert_eq!(array.get(7), 0.5);
    /// // The wrong element type is a clear error:
    /// // SAFETY: as above.
    /// let err = unsafe { ArrayOptions::new().open_npy::<f64, _>(&path) }
    ///     .map(|a: SharedArray<f64>| a)
    ///     .unwrap_err();
    /// assert!(matches!(err, ShmError::DtypeMismatch { .. }));
    /// assert!(err.to_string().contains("open it as an array of f32"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn open_npy<T: Element, M: Mode>(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<SharedArray<T, M>, ShmError> {
        let path = path.as_ref();
        let file = self.open_existing::<M>(path)?;
        let header = npy::read_header::<T>(&file, path)?;
        let layout = Layout::new(&header.shape, size_of::<T>())?;
        // SAFETY: forwarded from the caller.
        let region =
            unsafe { open_region::<T>(&file, path, layout, header.data_offset, !self.read_only)? };
        self.finish(region)
    }

    /// Opens `path` as these options say, for an array of mode `M`.
    fn open_existing<M: Mode>(&self, path: &Path) -> Result<File, ShmError> {
        if self.read_only && !M::READ_ONLY_OK {
            return Err(refuse(
                path,
                "open the file",
                ErrorKind::InvalidInput,
                format!(
                    "a read-only mapping cannot be a {} array, whose lock or claims hand out \
                     `&mut [T]`; open it read-only as SharedArray<T> (atomic mode)",
                    M::NAME
                ),
            ));
        }
        open_existing(path, !self.read_only)
    }

    /// The array over `region`, its pages populated if these options say so.
    fn finish<T: Element, M: Mode>(&self, region: Region) -> Result<SharedArray<T, M>, ShmError> {
        if self.populate {
            let access = if self.read_only {
                Access::Read
            } else {
                Access::Write
            };
            region.prefault(0, region.layout().bytes as usize, access)?;
        }
        Ok(SharedArray::from_region(region))
    }

    /// Saves a copy of `array` as a `.npy` file at `path`, as `np.save`
    /// does: numpy reads it with `np.load(path)`, and
    /// [`open_npy`](Self::open_npy) maps it. Safe: the file is written, not
    /// mapped.
    ///
    /// Unlike `np.save`, nothing may exist at `path` unless
    /// [`overwrite`](Self::overwrite) allows it. The file is written under
    /// a temporary name in the same directory, synced to disk and renamed
    /// into place, so `path` never holds a partial file. Rows are copied a
    /// megabyte at a time as the mode allows (atomic loads, under the lock,
    /// under a shared claim): save when no process writes the array (after
    /// the workers are done) for a consistent copy.
    ///
    /// # Errors
    ///
    /// [`ShmError::Refused`] if something exists at `path` (kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists)), [`ShmError::Io`]
    /// if the file cannot be written; [`ShmError::Reserve`] if the disk is too small;
    /// as for [`SharedArray::to_vec`] if rows cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("result.npy");
    /// let array = SharedArray::<i32>::new(&[2, 2])?;
    /// array.save_npy(&path)?;
    /// array.fill(5);
    /// // A second save must ask to replace the first:
    /// assert!(array.save_npy(&path).is_err());
    /// ArrayOptions::new().overwrite(true).save_npy(&array, &path)?;
    /// // SAFETY: a file only this program uses.
    /// let saved: SharedArray<i32> =
    ///     unsafe { ArrayOptions::new().read_only(true).open_npy(&path)? };
    /// assert_eq!(saved.to_vec()?, [5; 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_npy<T: Element, M: Mode>(
        &self,
        array: &SharedArray<T, M>,
        path: impl AsRef<Path>,
    ) -> Result<(), ShmError> {
        let path = path.as_ref();
        let target = target(path, self)?;
        let header = npy::header_bytes(T::NPY_DESCR, array.shape());
        let total = header.len() as u64 + array.size_bytes();
        check_disk_space(&target.path, target.dir(), total)?;
        let temp = target.temporary(target.dir())?;
        let write = || io_error(&target.path, "write the .npy file");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file());
        out.write_all(&header).map_err(write())?;
        // A megabyte of whole rows at a time (at least one row).
        let row_len = array.row_len().max(1);
        let per_chunk = ((1 << 20) / (row_len * size_of::<T>())).max(1);
        let mut buf = vec![T::default(); per_chunk * row_len];
        for first in (0..array.nrows()).step_by(per_chunk) {
            let rows = first..(first + per_chunk).min(array.nrows());
            let chunk = &mut buf[..rows.len() * array.row_len()];
            M::copy_rows(array, rows, chunk)?;
            // SAFETY: the elements are plain numbers (`Element` is sealed to
            // integers and floats): no padding, every byte initialised, so
            // the chunk is `size_of_val(chunk)` readable bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), size_of_val(chunk))
            };
            out.write_all(bytes).map_err(write())?;
        }
        out.flush().map_err(write())?;
        drop(out);
        temp.as_file()
            .sync_all()
            .map_err(io_error(&target.path, "sync the .npy file to disk"))?;
        target.persist(temp, self)
    }
}

impl<T: Element, M: Mode> SharedArray<T, M> {
    /// Saves a copy of the array as a `.npy` file at `path`, as `np.save`
    /// does, where nothing exists yet: [`ArrayOptions::save_npy`] with the
    /// default options (use [`ArrayOptions::overwrite`] to replace a file).
    ///
    /// # Errors
    ///
    /// As for [`ArrayOptions::save_npy`].
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{ArrayOptions, Partitioned, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("result.npy");
    /// let array = SharedArray::<f64, Partitioned>::new(&[3, 2])?;
    /// array.with_rows_mut(1..2, |row| row.fill(2.5))?;
    /// array.save_npy(&path)?;
    /// // SAFETY: a file only this program uses.
    /// let saved: SharedArray<f64> = unsafe { ArrayOptions::new().open_npy(&path)? };
    /// assert_eq!((saved.shape(), saved.get_at(&[1, 1])), (&[3, 2][..], 2.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<(), ShmError> {
        ArrayOptions::new().save_npy(self, path)
    }
}

/// What kind of file system object `meta` is, in words.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a regular file"
    }
}

/// Where a create writes, once the path has been checked against the
/// options: the final path, and the permissions of the file it replaces.
struct Target {
    path: PathBuf,
    replaces: Option<Permissions>,
}

/// Checks what is at `path` now, against `options`.
fn target(path: &Path, options: &ArrayOptions) -> Result<Target, ShmError> {
    const OP: &str = "create the file";
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Target {
                path: path.to_owned(),
                replaces: None,
            });
        }
        Err(e) => return Err(io_error(path, "look at the path")(e)),
    };
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path).map_err(io_error(path, "read the symbolic link"))?;
        if !options.follow_symlinks {
            return Err(refuse(
                path,
                OP,
                ErrorKind::AlreadyExists,
                format!(
                    "it is a symbolic link (to {}), left untouched; use \
                     ArrayOptions::new().follow_symlinks(true) to create (or, with overwrite, \
                     replace) its target, or remove the link",
                    to.display()
                ),
            ));
        }
        // Follow the whole chain; the parent directory must exist.
        let resolved = match std::fs::canonicalize(path) {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let absolute = dir.join(&to);
                let parent = absolute.parent().unwrap_or(Path::new("/"));
                let parent = std::fs::canonicalize(parent).map_err(io_error(
                    path,
                    "find the directory the symbolic link points into",
                ))?;
                match absolute.file_name() {
                    Some(name)
                        if !std::fs::symlink_metadata(parent.join(name))
                            .is_ok_and(|m| m.file_type().is_symlink()) =>
                    {
                        parent.join(name)
                    }
                    _ => {
                        return Err(refuse(
                            path,
                            OP,
                            ErrorKind::InvalidInput,
                            format!(
                                "it is a symbolic link to {}, which cannot be resolved",
                                to.display()
                            ),
                        ));
                    }
                }
            }
            Err(e) => return Err(io_error(path, "follow the symbolic link")(e)),
        };
        let options = ArrayOptions {
            follow_symlinks: false,
            ..*options
        };
        return target(&resolved, &options);
    }
    if !meta.is_file() {
        return Err(refuse(
            path,
            OP,
            ErrorKind::AlreadyExists,
            format!(
                "it is {}, not a regular file; it is left untouched (choose another path)",
                kind_of(&meta)
            ),
        ));
    }
    if !options.overwrite {
        return Err(refuse(
            path,
            OP,
            ErrorKind::AlreadyExists,
            format!(
                "it already exists ({} bytes) and is left untouched; open it with open_npy or \
                 open_file, or replace it with ArrayOptions::new().overwrite(true)",
                meta.len()
            ),
        ));
    }
    Ok(Target {
        path: path.to_owned(),
        replaces: Some(meta.permissions()),
    })
}

/// Creates a file at `path` as `options` allow, holding `prefix` (a `.npy`
/// header, or nothing) and `layout.bytes` of reserved, zero-filled data, and
/// maps it.
///
/// The file is made under a temporary name in the same directory and renamed
/// into place only once complete: a failure leaves nothing behind and
/// touches nothing that was there (the temporary file is removed).
///
/// # Safety
///
/// As for [`ArrayOptions::create_file`].
unsafe fn create_region<T: Element>(
    options: &ArrayOptions,
    path: &Path,
    layout: Layout,
    prefix: &[u8],
) -> Result<Region, ShmError> {
    let target = target(path, options)?;
    let dir = target.dir();
    let total = (prefix.len() as u64)
        .checked_add(layout.bytes)
        .ok_or_else(|| ShmError::InvalidShape {
            shape: layout.shape.to_vec(),
            reason: "the file would be larger than a file can be".into(),
        })?;
    check_disk_space(&target.path, dir, total)?;
    let temp = target.temporary(dir)?;
    let mut file = temp.as_file();
    file.write_all(prefix)
        .map_err(io_error(&target.path, "write the .npy header"))?;
    if layout.bytes > 0 {
        let (offset, len) = (prefix.len() as i64, layout.bytes as i64);
        // One call: a file system reserves all of it or fails.
        match memfd::reserve(file, offset, len, len, &target.path.display().to_string()) {
            Ok(_) => {}
            // Out of space: the error says so, with the size.
            Err(
                e @ ShmError::Reserve {
                    cause: Errno::ENOSPC | Errno::EDQUOT,
                    ..
                },
            ) => {
                return Err(e);
            }
            // Anything else (a file size limit, an I/O error, an immutable
            // directory) is named as it is, not as a lack of space.
            Err(ShmError::Reserve { cause, .. }) => {
                return Err(io_error(&target.path, "reserve the file's disk space")(
                    std::io::Error::from_raw_os_error(cause as i32),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let data_offset = prefix.len() as u64;
    // SAFETY: forwarded from the caller; the temporary file is ours alone
    // until it is renamed to the path the caller vouched for.
    let region = unsafe {
        Region::file(
            file,
            &target.path,
            T::NPY_DESCR,
            size_of::<T>(),
            layout,
            data_offset,
            true,
        )?
    };
    target.persist(temp, options)?;
    Ok(region)
}

impl Target {
    /// The directory the file goes in.
    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// A new temporary file in `dir` (the target's directory), with the
    /// permissions of the file it replaces, or `0666` less the umask.
    fn temporary(&self, dir: &Path) -> Result<tempfile::NamedTempFile, ShmError> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(io_error(
                &self.path,
                "create a temporary file in the directory",
            ))?;
        if let Some(permissions) = &self.replaces {
            temp.as_file()
                .set_permissions(permissions.clone())
                .map_err(io_error(
                    &self.path,
                    "give the new file the old one's permissions",
                ))?;
        }
        Ok(temp)
    }

    /// Renames the finished `temp` to the target: over an existing file if
    /// `options` allow, else only where nothing exists (checked again at
    /// the rename, atomically). On failure `temp` is removed.
    fn persist(
        &self,
        temp: tempfile::NamedTempFile,
        options: &ArrayOptions,
    ) -> Result<(), ShmError> {
        let persisted = if options.overwrite {
            temp.persist(&self.path)
        } else {
            temp.persist_noclobber(&self.path)
        };
        match persisted {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => Err(refuse(
                &self.path,
                "create the file",
                ErrorKind::AlreadyExists,
                "another process created it meanwhile; it is left untouched".into(),
            )),
            Err(e) => Err(io_error(&self.path, "rename the new file into place")(
                e.error,
            )),
        }
    }
}

/// Fails with `ENOSPC` at once if the file system holding `dir` has less
/// than `bytes` free, rather than filling the disk before failing.
fn check_disk_space(path: &Path, dir: &Path, bytes: u64) -> Result<(), ShmError> {
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

/// Checks that `file` is `data_offset` bytes of header plus exactly
/// `layout.bytes` of data, and maps it (read-write if `writable`).
///
/// # Safety
///
/// As for [`ArrayOptions::create_file`].
unsafe fn open_region<T: Element>(
    file: &File,
    path: &Path,
    layout: Layout,
    data_offset: u64,
    writable: bool,
) -> Result<Region, ShmError> {
    let actual = file
        .metadata()
        .map_err(io_error(path, "stat the file"))?
        .len();
    let expected = data_offset.checked_add(layout.bytes);
    if expected != Some(actual) {
        let expected = expected.unwrap_or(u64::MAX);
        let header = if data_offset > 0 {
            format!(
                " ({data_offset} bytes of header and {} of data)",
                layout.bytes
            )
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
            elem: T::NAME,
            expected,
            actual,
            detail,
        });
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        Region::file(
            file,
            path,
            T::NPY_DESCR,
            size_of::<T>(),
            layout,
            data_offset,
            writable,
        )
    }
}

/// Opens an existing regular file, read-write or read-only, without ever
/// blocking (a FIFO is refused, not waited on).
fn open_existing(path: &Path, writable: bool) -> Result<File, ShmError> {
    let op = if writable {
        "open the file for reading and writing"
    } else {
        "open the file for reading"
    };
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error(path, op))?;
    let meta = file.metadata().map_err(io_error(path, "stat the file"))?;
    if !meta.is_file() {
        return Err(refuse(
            path,
            op,
            ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(&meta)),
        ));
    }
    // Root may open a file nobody may write; mapping it writable would
    // change a file its owner marked read-only.
    if writable && meta.permissions().mode() & 0o222 == 0 {
        return Err(refuse(
            path,
            op,
            ErrorKind::PermissionDenied,
            format!(
                "the file is read-only (mode {:o}); open it with \
                 ArrayOptions::new().read_only(true), or make it writable first (chmod u+w)",
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(file)
}
