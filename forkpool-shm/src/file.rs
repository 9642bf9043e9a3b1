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

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

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

/// An [`ShmError::Io`] for `path` with a message of ours.
fn refuse(path: &Path, op: &'static str, kind: ErrorKind, message: String) -> ShmError {
    ShmError::Io {
        path: path.to_owned(),
        op,
        cause: std::io::Error::new(kind, message),
    }
}

/// How `create_file` and `create_npy` treat a path that already exists, in
/// the manner of [`std::fs::OpenOptions`]: settings first, then one call
/// acts.
///
/// By default (and through the plain `create_*` constructors) a file is
/// created only where nothing exists: an existing file, link, FIFO or device
/// is an error and is left untouched. With [`overwrite`](Self::overwrite),
/// an existing *regular* file is replaced atomically: the new file is made
/// and reserved under a temporary name in the same directory, then renamed
/// over the old one, so the old file stays whole until the new one is
/// complete (processes that have the old one mapped keep the old data; the
/// new file gets the old one's permission bits). Symbolic links are never
/// written through unless [`follow_symlinks`](Self::follow_symlinks) says
/// so; FIFOs, devices, sockets and directories are never replaced.
///
/// # Examples
///
/// ```
/// use forkpool_shm::{FileOptions, SharedArray};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("data.npy");
/// // SAFETY: a fresh file that only this program uses.
/// let first = unsafe { SharedArray::<f64>::create_npy(&path, &[4])? };
/// first.set(0, 1.0);
/// // A second plain create of the same path is refused, and the first
/// // array's data is untouched:
/// // SAFETY: as above.
/// let err = unsafe { SharedArray::<f64>::create_npy(&path, &[4]) }.unwrap_err();
/// assert!(err.to_string().contains("already exists"), "{err}");
/// drop(first);
/// // Replacing it must be asked for:
/// // SAFETY: as above.
/// let second: SharedArray<f64> =
///     unsafe { FileOptions::new().overwrite(true).create_npy(&path, &[8])? };
/// assert_eq!(second.len(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    overwrite: bool,
    follow_symlinks: bool,
}

/// The array types a file can be opened as: [`SharedArray`],
/// [`LockedArray`] and [`PartitionedArray`]. Sealed.
pub trait FileArray: sealed::FromShared {}

mod sealed {
    use crate::{Element, SharedArray};

    /// Wraps a freshly made array (nobody else can reach it yet).
    pub trait FromShared: Sized {
        /// The element type.
        type Elem: Element;
        /// Wraps `array`.
        fn from_shared(array: SharedArray<Self::Elem>) -> Self;
    }
}

impl<T: Element> sealed::FromShared for SharedArray<T> {
    type Elem = T;
    fn from_shared(array: SharedArray<T>) -> Self {
        array
    }
}
impl<T: Element> FileArray for SharedArray<T> {}
impl<T: Element> sealed::FromShared for LockedArray<T> {
    type Elem = T;
    fn from_shared(array: SharedArray<T>) -> Self {
        LockedArray::from_shared(array)
    }
}
impl<T: Element> FileArray for LockedArray<T> {}
impl<T: Element> sealed::FromShared for PartitionedArray<T> {
    type Elem = T;
    fn from_shared(array: SharedArray<T>) -> Self {
        PartitionedArray::from_shared(array)
    }
}
impl<T: Element> FileArray for PartitionedArray<T> {}

impl FileOptions {
    /// The default: create only where nothing exists, never follow a link.
    ///
    /// # Examples
    ///
    /// See [`FileOptions`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an existing regular file at the path is replaced (atomically,
    /// by rename) instead of being an error.
    ///
    /// # Examples
    ///
    /// See [`FileOptions`].
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
    /// use forkpool_shm::{FileOptions, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (target, link) = (dir.path().join("real.npy"), dir.path().join("link.npy"));
    /// std::os::unix::fs::symlink(&target, &link)?;
    /// // SAFETY: fresh files that only this program uses.
    /// assert!(unsafe { SharedArray::<u8>::create_npy(&link, &[2]) }.is_err());
    /// // SAFETY: as above.
    /// let array: SharedArray<u8> =
    ///     unsafe { FileOptions::new().follow_symlinks(true).create_npy(&link, &[2])? };
    /// assert!(target.is_file() && link.is_symlink());
    /// # drop(array);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// Creates a raw file (as `np.memmap` reads it) holding a zero-filled
    /// array of `shape`, and maps it as `A` (a [`SharedArray`],
    /// [`LockedArray`] or [`PartitionedArray`]). See
    /// [`SharedArray::create_file`] for the format.
    ///
    /// # Safety
    ///
    /// As for [`SharedArray::create_file`].
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::create_file`], except where these options
    /// allow the path to exist.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{FileOptions, LockedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("counts.u64");
    /// std::fs::write(&path, b"old contents")?;
    /// // SAFETY: only this program uses the file.
    /// let counts: LockedArray<u64> =
    ///     unsafe { FileOptions::new().overwrite(true).create_file(&path, &[3])? };
    /// assert_eq!(std::fs::metadata(&path)?.len(), 24);
    /// # drop(counts);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn create_file<A: FileArray>(
        &self,
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<A, ShmError> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { create_raw::<A::Elem>(self, path.as_ref(), shape)? };
        Ok(A::from_shared(SharedArray::from_region(region)))
    }

    /// Creates a `.npy` file holding a zero-filled, C-order array of
    /// `shape`, and maps it as `A`. See [`SharedArray::create_npy`].
    ///
    /// # Safety
    ///
    /// As for [`SharedArray::create_file`].
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::create_file`], except where these options
    /// allow the path to exist.
    ///
    /// # Examples
    ///
    /// See [`FileOptions`].
    pub unsafe fn create_npy<A: FileArray>(
        &self,
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<A, ShmError> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { create_npy::<A::Elem>(self, path.as_ref(), shape)? };
        Ok(A::from_shared(SharedArray::from_region(region)))
    }
}

impl FileOptions {
    /// Saves a copy of `array` as a `.npy` file at `path`, as `np.save`
    /// does, but under these options: by default only where nothing exists
    /// (see [`SharedArray::save_npy`]); with [`overwrite`](Self::overwrite),
    /// replacing a regular file atomically.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::save_npy`].
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{FileOptions, SharedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("result.npy");
    /// let array = SharedArray::<i32>::new(&[2, 2])?;
    /// array.save_npy(&path)?;
    /// array.fill(5);
    /// // A second save must ask to replace the first:
    /// assert!(array.save_npy(&path).is_err());
    /// FileOptions::new().overwrite(true).save_npy(&array, &path)?;
    /// // SAFETY: a file only this program uses.
    /// let saved = unsafe { SharedArray::<i32>::open_npy_readonly(&path)? };
    /// assert_eq!(saved.to_vec(), [5; 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_npy<T: Element>(
        &self,
        array: &SharedArray<T>,
        path: impl AsRef<Path>,
    ) -> Result<(), ShmError> {
        let path = path.as_ref();
        let target = target(path, self)?;
        let header = npy::header_bytes(T::NPY_DESCR, array.shape());
        let total = header.len() as u64 + array.size_bytes();
        check_disk_space(&target.path, target.dir(), total)?;
        let temp = target.temporary(target.dir())?;
        let write = io(&target.path, "write the .npy file");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file());
        out.write_all(&header).map_err(write)?;
        // Element by element (atomic loads), a megabyte at a time.
        let mut buf: Vec<T> = Vec::with_capacity((1 << 20) / size_of::<T>());
        let mut values = array.iter();
        loop {
            buf.clear();
            buf.extend(values.by_ref().take(buf.capacity()));
            if buf.is_empty() {
                break;
            }
            // SAFETY: the elements are plain numbers (`Element` is sealed to
            // integers and floats): no padding, every byte initialised, so
            // the buffer is `size_of_val(buf)` readable bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size_of_val(&buf[..]))
            };
            out.write_all(bytes)
                .map_err(io(&target.path, "write the .npy file"))?;
        }
        out.flush()
            .map_err(io(&target.path, "write the .npy file"))?;
        drop(out);
        temp.as_file()
            .sync_all()
            .map_err(io(&target.path, "sync the .npy file to disk"))?;
        target.persist(temp, self)
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
fn target(path: &Path, options: &FileOptions) -> Result<Target, ShmError> {
    const OP: &str = "create the file";
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Target {
                path: path.to_owned(),
                replaces: None,
            });
        }
        Err(e) => return Err(io(path, "look at the path")(e)),
    };
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path).map_err(io(path, "read the symbolic link"))?;
        if !options.follow_symlinks {
            return Err(refuse(
                path,
                OP,
                ErrorKind::AlreadyExists,
                format!(
                    "it is a symbolic link (to {}), left untouched; use \
                     FileOptions::new().follow_symlinks(true) to create (or, with overwrite, \
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
                let parent = std::fs::canonicalize(parent)
                    .map_err(io(path, "find the directory the symbolic link points into"))?;
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
            Err(e) => return Err(io(path, "follow the symbolic link")(e)),
        };
        let options = FileOptions {
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
                 open_file, or replace it with FileOptions::new().overwrite(true)",
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
/// As for the public file constructors.
unsafe fn create_region(
    options: &FileOptions,
    path: &Path,
    descr: &str,
    elem_size: usize,
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
        .map_err(io(&target.path, "write the .npy header"))?;
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
                return Err(io(&target.path, "reserve the file's disk space")(
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
            descr,
            elem_size,
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
            .map_err(io(&self.path, "create a temporary file in the directory"))?;
        if let Some(permissions) = &self.replaces {
            temp.as_file()
                .set_permissions(permissions.clone())
                .map_err(io(
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
        options: &FileOptions,
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
            Err(e) => Err(io(&self.path, "rename the new file into place")(e.error)),
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
/// As for the public file constructors.
#[allow(clippy::too_many_arguments)]
unsafe fn open_region(
    file: &File,
    path: &Path,
    descr: &str,
    elem: &'static str,
    elem_size: usize,
    layout: Layout,
    data_offset: u64,
    writable: bool,
) -> Result<Region, ShmError> {
    let actual = file.metadata().map_err(io(path, "stat the file"))?.len();
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
            elem,
            expected,
            actual,
            detail,
        });
    }
    // SAFETY: forwarded from the caller.
    unsafe { Region::file(file, path, descr, elem_size, layout, data_offset, writable) }
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
        .map_err(|e| {
            if writable && e.kind() == ErrorKind::PermissionDenied {
                refuse(
                    path,
                    op,
                    e.kind(),
                    format!("{e}; to read it only, use open_npy_readonly or open_file_readonly"),
                )
            } else {
                io(path, op)(e)
            }
        })?;
    let meta = file.metadata().map_err(io(path, "stat the file"))?;
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
                "the file is read-only (mode {:o}); open it with open_npy_readonly or \
                 open_file_readonly, or make it writable first (chmod u+w)",
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(file)
}

/// # Safety
///
/// As for [`SharedArray::create_file`].
unsafe fn create_raw<T: Element>(
    options: &FileOptions,
    path: &Path,
    shape: &[usize],
) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    // SAFETY: forwarded from the caller.
    unsafe { create_region(options, path, T::NPY_DESCR, size_of::<T>(), layout, &[]) }
}

/// # Safety
///
/// As for [`SharedArray::open_file`].
unsafe fn open_raw<T: Element>(
    path: &Path,
    shape: &[usize],
    writable: bool,
) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    let file = open_existing(path, writable)?;
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
            writable,
        )
    }
}

/// # Safety
///
/// As for [`SharedArray::create_npy`].
unsafe fn create_npy<T: Element>(
    options: &FileOptions,
    path: &Path,
    shape: &[usize],
) -> Result<Region, ShmError> {
    let layout = Layout::new(shape, size_of::<T>())?;
    let header = npy::header_bytes(T::NPY_DESCR, shape);
    // SAFETY: forwarded from the caller.
    unsafe { create_region(options, path, T::NPY_DESCR, size_of::<T>(), layout, &header) }
}

/// # Safety
///
/// As for [`SharedArray::open_npy`].
unsafe fn open_npy<T: Element>(path: &Path, writable: bool) -> Result<Region, ShmError> {
    let file = open_existing(path, writable)?;
    let header = npy::read_header::<T>(&file, path)?;
    let layout = Layout::new(&header.shape, size_of::<T>())?;
    // SAFETY: forwarded from the caller.
    unsafe {
        open_region(
            &file,
            path,
            T::NPY_DESCR,
            T::NAME,
            size_of::<T>(),
            layout,
            header.data_offset,
            writable,
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
            /// `np.memmap(path, dtype=..., mode='r+', shape=...)` reads. Disk
            /// space for the whole array is reserved (`fallocate`) before this
            /// returns, where the file system supports it; memory is not
            /// checked, since the kernel pages file-backed arrays to disk.
            ///
            /// Nothing may exist at `path`: an existing file, link, FIFO or
            /// device is an error and is left untouched (to replace a file,
            /// use [`FileOptions::overwrite`]). The file is made under a
            /// temporary name in the same directory and renamed into place
            /// once complete, so a failure leaves nothing behind.
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
            /// [`ShmError::Io`] if something exists at `path` (its `cause`
            /// has kind [`AlreadyExists`](std::io::ErrorKind::AlreadyExists)
            /// and says what is there), or the file cannot be created or
            /// mapped; [`ShmError::Reserve`] if the disk is too small;
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
                let region = unsafe { create_raw::<T>(&FileOptions::new(), path.as_ref(), shape)? };
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
            /// be opened read-write or mapped, is not a regular file, or has
            /// no write permission bit (even for root: use
            #[doc = "[`SharedArray::open_file_readonly`] to read it)."]
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
                let region = unsafe { open_raw::<T>(path.as_ref(), shape, true)? };
                Ok($wrap(SharedArray::from_region(region)))
            }

            /// Creates a `.npy` file at `path` holding a zero-filled, C-order
            /// array of `shape`, and maps it: numpy opens it with
            /// `np.load(path, mmap_mode='r+')` and sees what Rust writes.
            /// Nothing may exist at `path`, and disk space is reserved, as
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
                let region = unsafe { create_npy::<T>(&FileOptions::new(), path.as_ref(), shape)? };
                Ok($wrap(SharedArray::from_region(region)))
            }

            /// Opens a `.npy` file (as `np.save` or
            /// `np.lib.format.open_memmap` write it) and maps it; the shape
            #[doc = concat!("comes from the file (check it with [`expect_shape`](", stringify!($ty), "::expect_shape)).")]
            ///
            /// The element type must be the file's dtype (`'<f8'` for
            /// `f64`, or a synonym numpy reads the same: `'<d'`, `'float64'`),
            /// in C order. The header is read as numpy reads it, under
            /// numpy's limits (at most 10 000 characters, only Python
            /// literals), so a hostile file is an error, never a hang, a
            /// crash or a huge allocation.
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
            ///   malformed, too long, of an unknown version, or in Fortran
            ///   order;
            /// - [`ShmError::InvalidShape`] if the shape's size overflows
            ///   (numpy refuses such files too);
            /// - [`ShmError::FileLength`] if the data is shorter or longer
            ///   than the header's shape needs;
            /// - [`ShmError::Io`] if the file cannot be opened read-write (or
            #[doc = "  is read-only: use [`SharedArray::open_npy_readonly`])."]
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
                let region = unsafe { open_npy::<T>(path.as_ref(), true)? };
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
     elements with atomics and has no lock or claim table to share."
);
file_constructors!(
    LockedArray,
    LockedArray::from_shared,
    "array.with_lock(|data| data.row_mut(0).fill(1.5))?;",
    "Nor through another `create_*`/`open_*` of the same path: that gets \
     a lock of its own, which would not exclude this one's holders."
);
file_constructors!(
    PartitionedArray,
    PartitionedArray::from_shared,
    "array.with_rows_mut(0..1, |row| row.fill(1.5))?;",
    "Nor through another `create_*`/`open_*` of the same path: that gets \
     a claim table of its own, so two processes could claim the same rows."
);

impl<T: Element> SharedArray<T> {
    /// Saves a copy of the array as a `.npy` file at `path`, as `np.save`
    /// does: numpy reads it with `np.load(path)`, and
    /// [`open_npy`](Self::open_npy) maps it. Safe: the file is written, not
    /// mapped.
    ///
    /// Unlike `np.save`, nothing may exist at `path` (use
    /// [`FileOptions::overwrite`] and [`FileOptions::save_npy`] to replace a
    /// file). The file is written under a temporary name in the same
    /// directory, synced to disk and renamed into place, so `path` never
    /// holds a partial file. The elements are read one by one with atomic
    /// loads: save when no process writes the array (after the workers are
    /// done) for a consistent copy.
    ///
    /// # Errors
    ///
    /// [`ShmError::Io`] if something exists at `path` (kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists)) or the file
    /// cannot be written; [`ShmError::Reserve`] if the disk is too small.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::SharedArray;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("result.npy");
    /// let array = SharedArray::<f64>::new(&[3, 2])?;
    /// array.fill_row(1, 2.5);
    /// array.save_npy(&path)?;
    /// // SAFETY: a file only this program uses.
    /// let saved = unsafe { SharedArray::<f64>::open_npy(&path)? };
    /// assert_eq!((saved.shape(), saved.get_at(&[1, 1])), (&[3, 2][..], 2.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<(), ShmError> {
        FileOptions::new().save_npy(self, path)
    }

    /// Opens an existing raw file holding an array of `shape` for reading
    /// only: the file is opened `O_RDONLY` and mapped `PROT_READ`, as
    /// `np.memmap(path, mode='r')` does, so neither this process nor those it
    /// forks can change it. Works on files nobody may write (mode `0444`).
    ///
    /// Every method that reads works as usual; the methods that write
    /// (`set`, `fill_rows`, `fetch_add`...) panic, as numpy raises
    /// "assignment destination is read-only", and `prefault` (for writing)
    /// returns [`ShmError::ReadOnly`]. Check with
    /// [`is_read_only`](Self::is_read_only).
    ///
    /// # Safety
    ///
    /// While any process maps it, the file must not be truncated (access
    /// past the end raises `SIGBUS`), and if another program writes it, that
    /// is a concurrent write the caller accounts for as for
    /// [`create_file`](Self::create_file).
    ///
    /// # Errors
    ///
    /// As for [`open_file`](Self::open_file), except that the file need not
    /// be writable.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// use forkpool_shm::SharedArray;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("frozen.i32");
    /// std::fs::write(&path, [1i32, 2, 3].map(i32::to_le_bytes).concat())?;
    /// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
    /// // SAFETY: nothing truncates or writes the file while it is mapped.
    /// let array = unsafe { SharedArray::<i32>::open_file_readonly(&path, &[3])? };
    /// assert_eq!(array.to_vec(), [1, 2, 3]);
    /// assert!(array.is_read_only());
    /// // A read-write open of a file nobody may write is refused, even as root:
    /// // SAFETY: as above.
    /// assert!(unsafe { SharedArray::<i32>::open_file(&path, &[3]) }.is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn open_file_readonly(
        path: impl AsRef<Path>,
        shape: &[usize],
    ) -> Result<Self, ShmError> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { open_raw::<T>(path.as_ref(), shape, false)? };
        Ok(SharedArray::from_region(region))
    }

    /// Opens a `.npy` file for reading only (`O_RDONLY`, mapped `PROT_READ`,
    /// as `np.load(path, mmap_mode='r')`); the header is read as for
    /// [`open_npy`](Self::open_npy). Methods that write panic, as for
    /// [`open_file_readonly`](Self::open_file_readonly).
    ///
    /// # Safety
    ///
    /// As for [`open_file_readonly`](Self::open_file_readonly).
    ///
    /// # Errors
    ///
    /// As for [`open_npy`](Self::open_npy), except that the file need not be
    /// writable.
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::SharedArray;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.npy");
    /// // SAFETY: a fresh file that only this program uses.
    /// let array = unsafe { SharedArray::<f64>::create_npy(&path, &[2, 2])? };
    /// array.fill(0.5);
    /// drop(array);
    /// // SAFETY: as above.
    /// let frozen = unsafe { SharedArray::<f64>::open_npy_readonly(&path)? };
    /// assert_eq!(frozen.iter().sum::<f64>(), 2.0);
    /// // Writing panics, as numpy raises "assignment destination is read-only":
    /// let write = std::panic::AssertUnwindSafe(|| frozen.set(0, 1.0));
    /// assert!(std::panic::catch_unwind(write).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn open_npy_readonly(path: impl AsRef<Path>) -> Result<Self, ShmError> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { open_npy::<T>(path.as_ref(), false)? };
        Ok(SharedArray::from_region(region))
    }
}
