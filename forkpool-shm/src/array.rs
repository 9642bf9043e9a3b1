//! [`SharedArray`]: a lock-free shared array, the counterpart of
//! `multiprocessing.sharedctypes.RawArray` and `multiprocessing.Array(lock=False)`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ndarray::{ArrayD, ArrayView, ArrayViewMut, IxDyn, RawArrayView, RawArrayViewMut};

use crate::element::Element;
use crate::error::ShmError;
use crate::mode::{Atomic, Mode};
use crate::prefault::Access;
use crate::region::{Backing, Region};

/// An n-dimensional, row-major array of `T` in memory shared by every
/// process forked after it was made, reached as its [`Mode`] `M` allows:
/// [`Atomic`] (the default: without a lock), [`Locked`](crate::Locked) or
/// [`Partitioned`](crate::Partitioned). What all modes share (shape, files,
/// copies out) is written once; each mode's access is in its own `impl`.
///
/// The counterpart of Python's `multiprocessing.sharedctypes.RawArray` (and
/// `Array(lock=False)`) viewed through `np.frombuffer(...).reshape(...)`, and,
/// when made by [`ArrayOptions`](crate::ArrayOptions), of `np.memmap` and
/// `np.load(mmap_mode='r+')`. A value (`multiprocessing.Value`) is a
/// zero-dimensional array: `SharedArray::<u64>::full(&[], 0)`.
///
/// - **Anonymous** arrays ([`new`](Self::new)) live in a memfd mapped
///   `MAP_SHARED`: zero-filled, their memory allocated up front, nothing in
///   `/dev/shm`, freed when the last process that maps them drops them or
///   dies.
/// - **Handles are cheap**: `clone` is a reference-count increment, and a
///   handle is `Send + Sync`, so it can sit in a `static OnceLock` that forked
///   workers read (see the example below).
/// - **Access without a lock is sound**: elements are read and written with
///   atomics ([`get`](Self::get), [`set`](Self::set),
///   [`fetch_add`](Self::fetch_add), [`fill_row`](Self::fill_row),
///   [`write_row`](Self::write_row), [`iter`](Self::iter)...), which run at
///   memory bandwidth for bulk fills and scans. Ordinary slices and ndarray
///   views come from the `unsafe` [`rows_mut_unchecked`] family, whose
///   contract the caller keeps. For safe slices and views, use a
///   [`Partitioned`](crate::Partitioned) array (rows claimed by one
///   process at a time, checked across processes) or a
///   [`Locked`](crate::Locked) array (the whole array behind a lock).
///
/// Writes made by one process are visible to the others; to know *when*, use
/// a synchronising event: the worker's exit or reply (`waitpid`, a pipe), or
/// `Release`/`Acquire` orderings on an element.
///
/// [`rows_mut_unchecked`]: Self::rows_mut_unchecked
///
/// # Examples
///
/// Two forked workers fill one half each; the parent sees both halves:
///
/// ```
/// use forkpool_shm::SharedArray;
/// use nix::sys::wait::{waitpid, WaitStatus};
/// use nix::unistd::{fork, ForkResult};
///
/// let array = SharedArray::<f64>::new(&[4, 1000])?;
/// let mut children = Vec::new();
/// for rows in array.row_blocks(2) {
///     // SAFETY: the child only touches the array and then `_exit`s.
///     match unsafe { fork() }.expect("fork") {
///         ForkResult::Child => {
///             let pid = std::process::id() as f64;
///             array.fill_rows(rows, pid);
///             // SAFETY: `_exit` ends the child without running the parent's
///             // exit handlers.
///             unsafe { libc::_exit(0) };
///         }
///         ForkResult::Parent { child } => children.push(child),
///     }
/// }
/// for child in children.iter().copied() {
///     assert_eq!(waitpid(child, None)?, WaitStatus::Exited(child, 0));
/// }
/// assert_eq!(array.get(0), children[0].as_raw() as f64);
/// assert_eq!(array.get(array.len() - 1), children[1].as_raw() as f64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Workers that run plain `fn` pointers reach the array through a `static`:
///
/// ```
/// use std::sync::OnceLock;
/// use forkpool_shm::SharedArray;
///
/// static ARRAY: OnceLock<SharedArray<f64>> = OnceLock::new();
///
/// /// Sets rows `[offset, offset + blocksize)` to their row index.
/// fn populate((offset, blocksize): (usize, usize)) {
///     let array = ARRAY.get().expect("initializer ran");
///     for row in offset..offset + blocksize {
///         array.fill_row(row, row as f64);
///     }
/// }
///
/// ARRAY.set(SharedArray::new(&[100, 50])?).expect("set once");
/// let task: fn((usize, usize)) = populate; // what a pool sends to a worker
/// task((10, 20));
/// assert_eq!(ARRAY.get().unwrap().get_at(&[29, 0]), 29.0);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
pub struct SharedArray<T: Element, M = Atomic> {
    region: Arc<Region>,
    _elem: PhantomData<(T, fn() -> M)>,
}

impl<T: Element, M: Mode> Clone for SharedArray<T, M> {
    fn clone(&self) -> Self {
        SharedArray {
            region: Arc::clone(&self.region),
            _elem: PhantomData,
        }
    }
}

impl<T: Element, M: Mode> fmt::Debug for SharedArray<T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SharedArray");
        s.field("elem", &T::NAME)
            .field("mode", &M::NAME)
            .field("shape", &self.shape());
        match self.region.backing() {
            Backing::Anonymous => s.field("backing", &"anonymous"),
            Backing::File { path, .. } => s.field("backing", path),
        };
        s.finish()
    }
}

impl<T: Element, M: Mode> SharedArray<T, M> {
    /// Creates a zero-filled anonymous shared array of the given shape.
    ///
    /// The memory is a memfd mapped `MAP_SHARED`, allocated in full before
    /// this returns (so no worker can die half-way through a fill for want of
    /// memory), after checking that the machine can give it.
    ///
    /// Allocating is done in bulk and in parallel: the pages are *populated*
    /// (allocated, zeroed and mapped into this process) by
    /// `madvise(MADV_POPULATE_WRITE)` over disjoint ranges, one thread per
    /// core for arrays of 64 MiB and more (at least 32 MiB a thread); the
    /// threads are joined before this returns. A fill by this process that
    /// follows takes no page fault. On kernels before 5.14 the memory is
    /// reserved with `fallocate` and the pages touched, on the same threads.
    ///
    /// Processes forked later share the pages but not this process's page
    /// tables: each maps the pages it touches, a fault per 4 KiB page. A
    /// worker about to fill many rows should call
    /// [`prefault`](Self::prefault) on them first (measured here: filling
    /// runs 1.5 times as fast as faulting them one by one).
    ///
    /// # Errors
    ///
    /// - [`ShmError::OutOfMemory`] if the array is larger than the memory
    ///   available (`MemAvailable` plus free swap, or a cgroup limit), naming
    ///   both sizes and the file-backed alternative;
    /// - [`ShmError::Reserve`] if the kernel could not reserve the memory;
    /// - [`ShmError::InvalidShape`] if the size overflows or there are more
    ///   than 32 dimensions;
    /// - [`ShmError::Os`] or [`ShmError::Io`] if creating or mapping the memfd
    ///   fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<i32>::new(&[3, 4])?;
    /// assert_eq!(array.shape(), &[3, 4]);
    /// assert!(array.to_vec()?.iter().all(|&x| x == 0));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn new(shape: &[usize]) -> Result<Self, ShmError> {
        let region = Region::anonymous::<T>(shape, None, true)?;
        Ok(Self::from_region(region))
    }

    /// Creates an anonymous shared array of the given shape with every
    /// element set to `value`: numpy's `np.full`, made in one pass.
    ///
    /// The same array as [`new`](Self::new) followed by
    /// [`fill`](Self::fill), but written once instead of twice: each
    /// populating thread maps 256 KiB of new pages
    /// (`madvise(MADV_POPULATE_WRITE)`, which allocates and zeroes them),
    /// then writes `value` over them while they are still in its cache,
    /// before the next 256 KiB. Measured on the 2-core dev machine, 488 MiB
    /// of `f64`: see `benches/RESULTS.md`, issue 13. As with `new`, the
    /// memory is checked first and allocated in full before this returns,
    /// and this process takes no page fault when it uses the array.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::full(&[3, 4], 42.0)?;
    /// assert!(array.iter().all(|x| x == 42.0));
    /// assert_eq!(array.len(), 12);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn full(shape: &[usize], value: T) -> Result<Self, ShmError> {
        let fill = move |at: NonNull<u8>, bytes: usize| {
            debug_assert!(at.cast::<T>().is_aligned() && bytes.is_multiple_of(size_of::<T>()));
            // SAFETY: `Region::anonymous` hands us data bytes
            // `[at, at + bytes)` of a new mapping, aligned to `T` and a
            // whole number of elements, that no other thread or process
            // can reach yet (the region is not built, nothing has forked
            // with it), each piece to one thread only: an exclusive slice
            // for the duration of the call. Any bit pattern is a valid `T`
            // to overwrite (the pages are zeroed; `T` is a plain number).
            let data = unsafe {
                std::slice::from_raw_parts_mut(at.as_ptr().cast::<T>(), bytes / size_of::<T>())
            };
            data.fill(value);
        };
        let region = Region::anonymous::<T>(shape, Some(&fill), true)?;
        Ok(Self::from_region(region))
    }

    pub(crate) fn from_region(region: Region) -> Self {
        SharedArray {
            region: Arc::new(region),
            _elem: PhantomData,
        }
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The shape: the length of each axis, first axis (rows) first.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[2, 3, 4])?;
    /// assert_eq!(array.shape(), &[2, 3, 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.region.layout().shape
    }

    /// The number of dimensions.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::SharedArray::<u8>::new(&[2, 3])?.ndim(), 2);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::SharedArray::<u8>::new(&[2, 3])?.len(), 6);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.region.layout().len
    }

    /// Whether the array has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(forkpool_shm::SharedArray::<u8>::new(&[0, 3])?.is_empty());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of rows: the length of the first axis (1 for a
    /// zero-dimensional array).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::SharedArray::<u8>::new(&[5, 3])?.nrows(), 5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn nrows(&self) -> usize {
        self.region.layout().nrows
    }

    /// The number of elements in a row: the product of all axes but the first.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::SharedArray::<u8>::new(&[5, 3, 2])?.row_len(), 6);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row_len(&self) -> usize {
        self.region.layout().row_len
    }

    /// The size of the data in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::SharedArray::<f64>::new(&[5, 3])?.size_bytes(), 120);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn size_bytes(&self) -> u64 {
        self.region.layout().bytes
    }

    /// The file behind the array, or `None` for an anonymous array.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(forkpool_shm::SharedArray::<u8>::new(&[1])?.path().is_none());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn path(&self) -> Option<&Path> {
        match self.region.backing() {
            Backing::Anonymous => None,
            Backing::File { path, .. } => Some(path),
        }
    }

    /// The flat (row-major) index of a multi-dimensional index.
    ///
    /// # Panics
    ///
    /// If `index` has the wrong number of dimensions or is out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[2, 3, 4])?;
    /// assert_eq!(array.flat_index(&[1, 2, 3]), 23);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn flat_index(&self, index: &[usize]) -> usize {
        let shape = self.shape();
        assert_eq!(
            index.len(),
            shape.len(),
            "index {index:?} does not match the shape {shape:?}"
        );
        index.iter().zip(shape).fold(0, |flat, (&i, &n)| {
            assert!(
                i < n,
                "index {index:?} is out of bounds for shape {shape:?}"
            );
            flat * n + i
        })
    }

    fn ptr(&self) -> *mut T {
        self.region.data().cast::<T>().as_ptr()
    }

    /// Whether the array is mapped read-only
    /// ([`ArrayOptions::read_only`](crate::ArrayOptions::read_only)): then
    /// every method
    /// that writes panics.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!forkpool_shm::SharedArray::<u8>::new(&[1])?.is_read_only());
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn is_read_only(&self) -> bool {
        !self.region.writable()
    }

    /// [`ShmError::RowsOutOfBounds`] unless `rows` is a range of this
    /// array's rows: the one bounds check of rows, for every mode.
    pub(crate) fn check_rows(&self, rows: &Range<usize>) -> Result<(), ShmError> {
        let nrows = self.nrows();
        if rows.start <= rows.end && rows.end <= nrows {
            return Ok(());
        }
        Err(ShmError::RowsOutOfBounds {
            rows: rows.clone(),
            nrows,
        })
    }

    /// Copies the whole array into a new vector, row-major, as the mode
    /// allows: atomic `Relaxed` loads, under the lock, or under a shared
    /// claim of all rows (`ndarray.tolist()`, flat).
    ///
    /// # Errors
    ///
    /// Never for [`Atomic`] arrays; for the others, as for
    /// [`with_lock`](SharedArray::with_lock) or
    /// [`with_rows`](SharedArray::with_rows) (e.g. [`ShmError::RowsBusy`]
    /// while rows are claimed exclusively).
    ///
    /// # Examples
    ///
    /// ```
    /// use forkpool_shm::{Partitioned, SharedArray, ShmError};
    /// let array = SharedArray::<u8, Partitioned>::new(&[2, 2])?;
    /// array.with_rows_mut(1..2, |row| {
    ///     row.fill(7);
    ///     assert!(matches!(array.to_vec(), Err(ShmError::RowsBusy { .. })));
    /// })?;
    /// assert_eq!(array.to_vec()?, [0, 0, 7, 7]);
    /// # Ok::<(), ShmError>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>, ShmError> {
        let mut out = vec![T::default(); self.len()];
        M::copy_rows(self, 0..self.nrows(), &mut out)?;
        Ok(out)
    }

    /// Copies the whole array into an owned `ndarray` array of the same
    /// shape, as [`to_vec`](Self::to_vec) does.
    ///
    /// # Errors
    ///
    /// As for [`to_vec`](Self::to_vec).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[2, 3])?;
    /// array.set_at(&[1, 1], 5.0);
    /// let owned = array.to_ndarray()?;
    /// assert_eq!(owned.shape(), &[2, 3]);
    /// assert_eq!(owned[[1, 1]], 5.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn to_ndarray(&self) -> Result<ArrayD<T>, ShmError> {
        let all = ArrayD::from_shape_vec(IxDyn(self.shape()), self.to_vec()?);
        Ok(all.expect("the shape matches the number of elements"))
    }

    /// Splits the rows into `parts` contiguous, disjoint ranges of nearly equal
    /// size (the first ones one row longer when the division is not exact);
    /// what each worker gets in a parallel fill. See [`split_rows`].
    ///
    /// [`split_rows`]: crate::split_rows
    ///
    /// # Panics
    ///
    /// If `parts == 0`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[10, 4])?;
    /// assert_eq!(array.row_blocks(3), [0..4, 4..7, 7..10]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn row_blocks(&self, parts: usize) -> Vec<Range<usize>> {
        crate::partition::split_rows(self.nrows(), parts)
    }

    /// A raw pointer to the first element (row-major data follows). Reading or
    /// writing through it is up to the caller, who must keep the rules of
    /// [`rows_mut_unchecked`](Self::rows_mut_unchecked) or use atomics.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u64>::new(&[2])?;
    /// assert_eq!(array.as_ptr() as usize % 4096, 0); // anonymous data is page-aligned
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn as_ptr(&self) -> *const T {
        self.ptr()
    }

    /// A raw mutable pointer to the first element. See [`as_ptr`](Self::as_ptr).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u64>::new(&[2])?;
    /// // SAFETY: no other thread or process uses the array.
    /// unsafe { array.as_mut_ptr().add(1).write(9) };
    /// assert_eq!(array.get(1), 9);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn as_mut_ptr(&self) -> *mut T {
        self.ptr()
    }

    /// A raw `ndarray` view of the whole array: shape and strides without a
    /// promise of exclusive or stable contents, so creating it is safe and
    /// dereferencing it is `unsafe` (see `ndarray`'s `RawArrayView`).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[2, 3])?;
    /// let raw = array.raw_view();
    /// assert_eq!(raw.shape(), &[2, 3]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn raw_view(&self) -> RawArrayView<T, IxDyn> {
        // SAFETY: see `view::raw`.
        unsafe { crate::view::raw(self.ptr(), self.shape()) }
    }

    /// A raw mutable `ndarray` view of the whole array (see
    /// [`raw_view`](Self::raw_view)).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[2, 3])?;
    /// let raw = array.raw_view_mut();
    /// // SAFETY: no other thread or process uses the array while `view` lives.
    /// let mut view = unsafe { raw.deref_into_view_mut() };
    /// view[[1, 2]] = 4.0;
    /// assert_eq!(array.get(5), 4.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn raw_view_mut(&self) -> RawArrayViewMut<T, IxDyn> {
        // SAFETY: see `view::raw_mut`.
        unsafe { crate::view::raw_mut(self.ptr(), self.shape()) }
    }

    /// Writes the array's modified pages to its file and waits until they are
    /// on disk (`msync(MS_SYNC)`). Does nothing for an anonymous array.
    ///
    /// # Errors
    ///
    /// [`ShmError::Io`] if `msync` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.f64");
    /// // SAFETY: the file is new and only used through this array.
    /// let array: forkpool_shm::SharedArray<f64> =
    ///     unsafe { forkpool_shm::ArrayOptions::new().create_file(&path, &[8])? };
    /// array.set(0, 1.0);
    /// array.flush()?;
    /// assert_eq!(std::fs::read(&path)?[..8], 1.0f64.to_ne_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> Result<(), ShmError> {
        self.region.flush(true)
    }

    /// Starts writing the array's modified pages to its file, without waiting
    /// (`msync(MS_ASYNC)`). Does nothing for an anonymous array.
    ///
    /// # Errors
    ///
    /// [`ShmError::Io`] if `msync` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[8])?;
    /// array.flush_async()?; // anonymous: nothing to do
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn flush_async(&self) -> Result<(), ShmError> {
        self.region.flush(false)
    }

    /// Checks that the array has the shape `expected`, returning it if so;
    /// handy after [`ArrayOptions::open_npy`](crate::ArrayOptions::open_npy),
    /// whose shape comes from the
    /// file.
    ///
    /// # Errors
    ///
    /// [`ShmError::ShapeMismatch`] naming both shapes.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[2, 3])?;
    /// let array = array.expect_shape(&[2, 3])?;
    /// let err = array.expect_shape(&[3, 2]).unwrap_err();
    /// assert!(err.to_string().contains("expected [3, 2], found [2, 3]"));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn expect_shape(self, expected: &[usize]) -> Result<Self, ShmError> {
        if self.shape() == expected {
            return Ok(self);
        }
        Err(ShmError::ShapeMismatch {
            what: match self.path() {
                Some(path) => path.display().to_string(),
                None => "anonymous array".to_owned(),
            },
            expected: expected.to_vec(),
            found: self.shape().to_vec(),
        })
    }
}

/// Atomic access: the methods of [`Atomic`] arrays (the default mode).
impl<T: Element> SharedArray<T> {
    /// Pointer to element `index`, after a bounds check.
    fn elem(&self, index: usize) -> *mut T {
        let len = self.len();
        assert!(
            index < len,
            "index {index} is out of bounds for {len} elements"
        );
        // SAFETY: `index < len`, so the result is inside the data.
        unsafe { self.ptr().add(index) }
    }

    /// Panics unless the array may be written (it is not mapped read-only).
    #[inline]
    #[track_caller]
    fn assert_writable(&self) {
        if !self.region.writable() {
            panic!("{}", self.region.read_only_error());
        }
    }

    /// As [`elem`](Self::elem), for a write.
    #[track_caller]
    fn elem_mut(&self, index: usize) -> *mut T {
        self.assert_writable();
        self.elem(index)
    }

    /// As [`rows_span`](Self::rows_span), for a write.
    #[track_caller]
    fn rows_span_mut(&self, rows: &Range<usize>) -> (*mut T, usize) {
        self.assert_writable();
        self.rows_span(rows)
    }

    /// Pointer to the first element of `rows` and the number of elements in
    /// them, after a bounds check.
    #[track_caller]
    fn rows_span(&self, rows: &Range<usize>) -> (*mut T, usize) {
        if let Err(e) = self.check_rows(rows) {
            panic!("{e}");
        }
        let row_len = self.row_len();
        // SAFETY: `rows.start <= nrows`, so the offset is at most the length
        // of the data.
        let start = unsafe { self.ptr().add(rows.start * row_len) };
        (start, (rows.end - rows.start) * row_len)
    }

    /// Reads element `index` (flat, row-major) atomically, with `Relaxed`
    /// ordering: the value some process stored, with no promise about other
    /// elements.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[10])?;
    /// array.set(3, 1.5);
    /// assert_eq!(array.get(3), 1.5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn get(&self, index: usize) -> T {
        self.load(index, Ordering::Relaxed)
    }

    /// Writes element `index` atomically, with `Relaxed` ordering.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u16>::new(&[4])?;
    /// array.set(0, 7);
    /// assert_eq!(array.to_vec()?, [7, 0, 0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn set(&self, index: usize, value: T) {
        self.store(index, value, Ordering::Relaxed)
    }

    /// Reads the element at a multi-dimensional index (`Relaxed`).
    ///
    /// # Panics
    ///
    /// If the index does not fit the shape.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<i64>::new(&[2, 3])?;
    /// array.set_at(&[1, 2], -4);
    /// assert_eq!(array.get_at(&[1, 2]), -4);
    /// assert_eq!(array.get(5), -4);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn get_at(&self, index: &[usize]) -> T {
        self.get(self.flat_index(index))
    }

    /// Writes the element at a multi-dimensional index (`Relaxed`).
    ///
    /// # Panics
    ///
    /// If the index does not fit the shape.
    ///
    /// # Examples
    ///
    /// See [`get_at`](Self::get_at).
    pub fn set_at(&self, index: &[usize], value: T) {
        self.set(self.flat_index(index), value)
    }

    /// Reads element `index` atomically with the given ordering.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, or `order` is `Release` or `AcqRel`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let flags = forkpool_shm::SharedArray::<u8>::new(&[8])?;
    /// flags.store(2, 1, Ordering::Release);
    /// assert_eq!(flags.load(2, Ordering::Acquire), 1);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn load(&self, index: usize, order: Ordering) -> T {
        // SAFETY: `elem` checked the bounds; the data is aligned (page-aligned
        // start, or a `.npy` offset checked against the element size) and only
        // accessed atomically outside `unsafe` contracts.
        unsafe { T::atomic_load(self.elem(index), order) }
    }

    /// Writes element `index` atomically with the given ordering.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, or `order` is `Acquire` or `AcqRel`.
    ///
    /// # Examples
    ///
    /// See [`load`](Self::load).
    pub fn store(&self, index: usize, value: T, order: Ordering) {
        // SAFETY: as in `load`.
        unsafe { T::atomic_store(self.elem_mut(index), value, order) }
    }

    /// Replaces element `index` atomically, returning the previous value.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let array = forkpool_shm::SharedArray::<i32>::new(&[2])?;
    /// assert_eq!(array.swap(1, 5, Ordering::AcqRel), 0);
    /// assert_eq!(array.get(1), 5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn swap(&self, index: usize, value: T, order: Ordering) -> T {
        // SAFETY: as in `load`.
        unsafe { T::atomic_swap(self.elem_mut(index), value, order) }
    }

    /// Replaces element `index` by `new` if it equals `current` (bitwise, for
    /// floats), atomically. Returns the previous value: `Ok` if it was
    /// replaced, `Err` if not.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, or the orderings are invalid as for
    /// [`AtomicU64::compare_exchange`](std::sync::atomic::AtomicU64::compare_exchange).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering::{AcqRel, Acquire};
    /// let array = forkpool_shm::SharedArray::<u32>::new(&[1])?;
    /// assert_eq!(array.compare_exchange(0, 0, 9, AcqRel, Acquire), Ok(0));
    /// assert_eq!(array.compare_exchange(0, 0, 7, AcqRel, Acquire), Err(9));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn compare_exchange(
        &self,
        index: usize,
        current: T,
        new: T,
        success: Ordering,
        failure: Ordering,
    ) -> Result<T, T> {
        // SAFETY: as in `load`.
        unsafe { T::atomic_compare_exchange(self.elem_mut(index), current, new, success, failure) }
    }

    /// Adds to element `index` atomically (wrapping for integers; a
    /// compare-and-swap loop for floats), returning the previous value.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let histogram = forkpool_shm::SharedArray::<u64>::new(&[10])?;
    /// histogram.fetch_add(3, 1, Ordering::Relaxed);
    /// histogram.fetch_add(3, 1, Ordering::Relaxed);
    /// assert_eq!(histogram.get(3), 2);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fetch_add(&self, index: usize, value: T, order: Ordering) -> T {
        // SAFETY: as in `load`.
        unsafe { T::atomic_fetch_add(self.elem_mut(index), value, order) }
    }

    /// Subtracts from element `index` atomically (wrapping for integers),
    /// returning the previous value.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let array = forkpool_shm::SharedArray::<f32>::new(&[1])?;
    /// array.fetch_sub(0, 0.5, Ordering::Relaxed);
    /// assert_eq!(array.get(0), -0.5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fetch_sub(&self, index: usize, value: T, order: Ordering) -> T {
        // SAFETY: as in `load`.
        unsafe { T::atomic_fetch_sub(self.elem_mut(index), value, order) }
    }

    /// Sets every element to `value` (atomic `Relaxed` stores).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[3, 3])?;
    /// array.fill(42.0);
    /// assert!(array.to_vec()?.iter().all(|&x| x == 42.0));
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fill(&self, value: T) {
        self.fill_rows(0..self.nrows(), value)
    }

    /// Sets every element of rows `[rows.start, rows.end)` to `value`, with
    /// atomic `Relaxed` stores: sound whatever other processes do, and as fast
    /// as `memset` on large rows (both run at memory bandwidth).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u32>::new(&[4, 2])?;
    /// array.fill_rows(1..3, 7);
    /// assert_eq!(array.to_vec()?, [0, 0, 7, 7, 7, 7, 0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fill_rows(&self, rows: Range<usize>, value: T) {
        let (start, len) = self.rows_span_mut(&rows);
        for i in 0..len {
            // SAFETY: `rows_span` checked `[start, start + len)` is inside the
            // data; atomic access as in `load`.
            unsafe { T::atomic_store(start.add(i), value, Ordering::Relaxed) }
        }
    }

    /// Sets every element of row `row` to `value` (atomic `Relaxed` stores).
    ///
    /// # Panics
    ///
    /// If `row >= self.nrows()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<i8>::new(&[2, 3])?;
    /// array.fill_row(1, -1);
    /// assert_eq!(array.to_vec()?, [0, 0, 0, -1, -1, -1]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn fill_row(&self, row: usize, value: T) {
        self.fill_rows(row..row + 1, value)
    }

    /// Copies `src` into row `row` (atomic `Relaxed` stores).
    ///
    /// # Panics
    ///
    /// If `row >= self.nrows()` or `src.len() != self.row_len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f32>::new(&[2, 3])?;
    /// array.write_row(0, &[1.0, 2.0, 3.0]);
    /// assert_eq!(array.row_to_vec(0), [1.0, 2.0, 3.0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn write_row(&self, row: usize, src: &[T]) {
        assert_eq!(
            src.len(),
            self.row_len(),
            "a row has {} elements, got {}",
            self.row_len(),
            src.len()
        );
        self.write_rows(row, src)
    }

    /// Copies `src` into consecutive rows starting at `first_row` (atomic
    /// `Relaxed` stores); `src` holds whole rows.
    ///
    /// # Panics
    ///
    /// If `src.len()` is not a multiple of the row length, or the rows do not
    /// fit.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[3, 2])?;
    /// array.write_rows(1, &[1, 2, 3, 4]);
    /// assert_eq!(array.to_vec()?, [0, 0, 1, 2, 3, 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn write_rows(&self, first_row: usize, src: &[T]) {
        let rows = self.rows_of(first_row, src.len());
        let (start, len) = self.rows_span_mut(&rows);
        debug_assert_eq!(len, src.len());
        for (i, &v) in src.iter().enumerate() {
            // SAFETY: inside the checked span; atomic access as in `load`.
            unsafe { T::atomic_store(start.add(i), v, Ordering::Relaxed) }
        }
    }

    /// Copies row `row` into `dst` (atomic `Relaxed` loads).
    ///
    /// # Panics
    ///
    /// If `row >= self.nrows()` or `dst.len() != self.row_len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<i16>::new(&[2, 2])?;
    /// array.fill_row(1, 3);
    /// let mut row = [0; 2];
    /// array.read_row(1, &mut row);
    /// assert_eq!(row, [3, 3]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn read_row(&self, row: usize, dst: &mut [T]) {
        assert_eq!(
            dst.len(),
            self.row_len(),
            "a row has {} elements, got a buffer of {}",
            self.row_len(),
            dst.len()
        );
        self.read_rows(row, dst)
    }

    /// Copies consecutive rows starting at `first_row` into `dst`, which holds
    /// whole rows (atomic `Relaxed` loads).
    ///
    /// # Panics
    ///
    /// If `dst.len()` is not a multiple of the row length, or the rows do not
    /// fit.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[3, 2])?;
    /// array.fill(1);
    /// let mut two_rows = [0; 4];
    /// array.read_rows(1, &mut two_rows);
    /// assert_eq!(two_rows, [1; 4]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn read_rows(&self, first_row: usize, dst: &mut [T]) {
        let rows = self.rows_of(first_row, dst.len());
        let (start, len) = self.rows_span(&rows);
        debug_assert_eq!(len, dst.len());
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: inside the checked span; atomic access as in `load`.
            *d = unsafe { T::atomic_load(start.add(i), Ordering::Relaxed) };
        }
    }

    fn rows_of(&self, first_row: usize, elems: usize) -> Range<usize> {
        let row_len = self.row_len().max(1);
        assert!(
            elems.is_multiple_of(row_len),
            "{elems} elements are not whole rows of {row_len}"
        );
        first_row..first_row + elems / row_len
    }

    /// Iterates over the elements of rows `[rows.start, rows.end)`, row-major,
    /// reading each with an atomic `Relaxed` load: a safe way to scan a large
    /// array without copying it (it runs at memory bandwidth).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[100, 100])?;
    /// array.fill(42.0);
    /// array.fill_row(7, 1.0);
    /// let left = array.iter_rows(0..100).filter(|&x| x == 42.0).count();
    /// assert_eq!(left, 9900);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn iter_rows(&self, rows: Range<usize>) -> impl ExactSizeIterator<Item = T> + '_ {
        let (start, len) = self.rows_span(&rows);
        // SAFETY: `rows_span` checked `[start, start + len)` is inside the
        // data; atomic access as in `load`.
        (0..len).map(move |i| unsafe { T::atomic_load(start.add(i), Ordering::Relaxed) })
    }

    /// Iterates over all elements, row-major, with atomic `Relaxed` loads. See
    /// [`iter_rows`](Self::iter_rows).
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u32>::new(&[3, 3])?;
    /// array.set(4, 5);
    /// assert_eq!(array.iter().sum::<u32>(), 5);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + '_ {
        self.iter_rows(0..self.nrows())
    }

    /// Copies row `row` into a new vector (atomic `Relaxed` loads).
    ///
    /// # Panics
    ///
    /// If `row >= self.nrows()`.
    ///
    /// # Examples
    ///
    /// See [`write_row`](Self::write_row).
    pub fn row_to_vec(&self, row: usize) -> Vec<T> {
        let mut out = vec![T::default(); self.row_len()];
        self.read_row(row, &mut out);
        out
    }

    /// A shared slice of rows `[rows.start, rows.end)`, without any check that
    /// nobody writes them.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, no thread or process may write these
    /// rows (by any means: atomics, slices, views, a `.npy` file written by
    /// numpy), processes forked while it lives included. Readers are fine.
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u32>::new(&[4, 2])?;
    /// array.fill_row(2, 5);
    /// // SAFETY: no other process exists and this thread writes nothing while
    /// // `rows` lives.
    /// let rows = unsafe { array.rows_unchecked(2..4) };
    /// assert_eq!(rows, [5, 5, 0, 0]);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub unsafe fn rows_unchecked(&self, rows: Range<usize>) -> &[T] {
        let (start, len) = self.rows_span(&rows);
        // SAFETY: the span is inside the data and aligned; every bit pattern is
        // a valid `T`; the caller promises nobody writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(start, len) }
    }

    /// An exclusive slice of rows `[rows.start, rows.end)`: the fast path for
    /// filling rows with ordinary Rust code (`copy_from_slice`, an RNG's
    /// `fill`, SIMD loops).
    ///
    /// The safe alternatives: [`fill_rows`](Self::fill_rows) and
    /// [`write_rows`](Self::write_rows) use atomics and are as fast for plain
    /// fills and copies; a [`Partitioned`](crate::Partitioned) array
    /// checks the exclusivity of claimed rows at run time.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, no other thread or process may read or
    /// write these rows by any means, and this one only through the slice;
    /// typically: each worker is handed a disjoint range of rows, and nobody
    /// reads them until the workers are done. Calling this twice for
    /// overlapping rows while both slices live is undefined behaviour, and
    /// so is forking while it lives into a process that uses it (a slice
    /// moved into a pool's `initializer`, or left where a worker reaches it,
    /// is in every worker at once).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[4, 3])?;
    /// // SAFETY: this is the only process and thread using rows 1..3 while
    /// // `block` lives.
    /// let block = unsafe { array.rows_mut_unchecked(1..3) };
    /// for (i, x) in block.iter_mut().enumerate() {
    ///     *x = i as f64;
    /// }
    /// assert_eq!(array.get_at(&[2, 2]), 5.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn rows_mut_unchecked(&self, rows: Range<usize>) -> &mut [T] {
        let (start, len) = self.rows_span_mut(&rows);
        // SAFETY: the span is inside the data and aligned; every bit pattern is
        // a valid `T`; the caller promises exclusive access while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(start, len) }
    }

    /// A shared `ndarray` view of the whole array.
    ///
    /// # Safety
    ///
    /// As for [`rows_unchecked`](Self::rows_unchecked) over all rows: nobody
    /// may write the array while the view lives.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[2, 2])?;
    /// array.fill(1.0);
    /// // SAFETY: the workers are done (there are none here); nobody writes.
    /// let view = unsafe { array.view_unchecked() };
    /// assert_eq!(view.sum(), 4.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub unsafe fn view_unchecked(&self) -> ArrayView<'_, T, IxDyn> {
        // SAFETY: the caller promises nobody writes while the view lives.
        unsafe { crate::view::shared(self.ptr(), self.shape()) }
    }

    /// An exclusive `ndarray` view of the whole array.
    ///
    /// # Safety
    ///
    /// As for [`rows_mut_unchecked`](Self::rows_mut_unchecked) over all rows:
    /// no other thread or process may access the array while the view lives.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[2, 2])?;
    /// // SAFETY: nothing else uses the array while `view` lives.
    /// let mut view = unsafe { array.view_mut_unchecked() };
    /// view.fill(2.0);
    /// assert_eq!(array.get(3), 2.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn view_mut_unchecked(&self) -> ArrayViewMut<'_, T, IxDyn> {
        self.assert_writable();
        // SAFETY: the caller promises exclusive access while the view lives.
        unsafe { crate::view::exclusive(self.ptr(), self.shape()) }
    }

    /// Maps the pages of rows `[rows.start, rows.end)` into this process,
    /// writable, in one call (`madvise(MADV_POPULATE_WRITE)` for a file;
    /// for an anonymous array, whose pages exist since creation,
    /// `MADV_POPULATE_READ`, which maps shared memory writable too and maps
    /// 16 pages per fault; on kernels before 5.14, by touching each page).
    /// Data is unchanged.
    ///
    /// Every process takes a page fault per 4 KiB page the first time it
    /// touches a page of a shared mapping; a worker about to write its rows
    /// should call this first. Measured here (`benches/fill.rs`, 256 MiB of
    /// `f64`): one fresh worker fills at 2.5 GiB/s faulting page by page and
    /// at 3.7 GiB/s with `prefault` first; two workers at 4.4 and 6.7 GiB/s
    /// together. For a
    /// file-backed array this marks the pages dirty (they will be written
    /// back): use [`prefault_read`](Self::prefault_read) for rows you only
    /// read.
    ///
    /// # Errors
    ///
    /// [`ShmError::Os`] if `madvise` fails (e.g. `ENOMEM`, `EFAULT` for a
    /// file truncated behind the mapping).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<f64>::new(&[100, 1000])?;
    /// array.prefault(0..50)?; // this worker's rows
    /// array.fill_rows(0..50, 1.0);
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn prefault(&self, rows: Range<usize>) -> Result<(), ShmError> {
        self.prefault_as(rows, Access::Write)
    }

    /// Maps the pages of rows `[rows.start, rows.end)` into this process for
    /// reading (`MADV_POPULATE_READ`): for a file-backed array, reads them
    /// from disk without marking them dirty. See [`prefault`](Self::prefault).
    ///
    /// # Errors
    ///
    /// As for [`prefault`](Self::prefault).
    ///
    /// # Panics
    ///
    /// If the rows are out of bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// let array = forkpool_shm::SharedArray::<u8>::new(&[10, 10])?;
    /// array.prefault_read(0..10)?;
    /// # Ok::<(), forkpool_shm::ShmError>(())
    /// ```
    pub fn prefault_read(&self, rows: Range<usize>) -> Result<(), ShmError> {
        self.prefault_as(rows, Access::Read)
    }

    pub(crate) fn prefault_as(&self, rows: Range<usize>, access: Access) -> Result<(), ShmError> {
        let (_, len) = self.rows_span(&rows);
        let start = rows.start * self.row_len() * size_of::<T>();
        self.region
            .prefault(start, start + len * size_of::<T>(), access)
    }
}

/// Element access, slices and views over one array, in one process: these
/// run under Miri too (`cargo +nightly miri test -p forkpool-shm --lib`),
/// which checks the pointer arithmetic and the atomics for undefined
/// behaviour (an anonymous array is heap memory there; see `region.rs`).
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

    use super::*;

    fn exercise<T: Element + From<u8> + std::ops::Add<Output = T>>() {
        let array = SharedArray::<T>::new(&[3, 5]).unwrap();
        let (one, two) = (T::from(1), T::from(2));
        array.set(0, one);
        array.set_at(&[2, 4], two);
        assert_eq!(
            (array.get(0), array.get(14), array.get_at(&[2, 4])),
            (one, two, two)
        );
        assert_eq!(array.fetch_add(1, two, AcqRel), T::default());
        assert_eq!(array.fetch_sub(1, one, AcqRel), two);
        assert_eq!(array.swap(1, two, AcqRel), one);
        assert_eq!(
            array.compare_exchange(1, two, one, AcqRel, Acquire),
            Ok(two)
        );
        assert_eq!(
            array.compare_exchange(1, two, one, AcqRel, Acquire),
            Err(one)
        );
        array.store(2, two, Relaxed);
        assert_eq!(array.load(2, Relaxed), two);
        array.fill_rows(1..2, one);
        array.write_row(2, &[two; 5]);
        let mut row = [T::default(); 5];
        array.read_row(1, &mut row);
        assert_eq!(row, [one; 5]);
        assert_eq!(array.row_to_vec(2), [two; 5]);
        assert_eq!(array.iter_rows(1..3).count(), 10);
        let all = array.to_vec().unwrap();
        assert_eq!(all.len(), 15);
        assert_eq!(all[..3], [one, one, two]);
        assert_eq!(array.to_ndarray().unwrap()[[2, 0]], two);
    }

    #[test]
    fn element_access_reads_back_what_it_wrote_for_every_width() {
        // One of each size (1, 2, 4, 8 bytes), integers and floats.
        let _: [(); 4] = [
            exercise::<u8>(),
            exercise::<i16>(),
            exercise::<f32>(),
            exercise::<f64>(),
        ];
    }

    #[test]
    fn slices_and_views_cover_exactly_the_rows_asked_for() {
        let array = SharedArray::<f64>::new(&[4, 3]).unwrap();
        // SAFETY: one thread, no other process; each borrow ends before the
        // next access.
        unsafe {
            array.rows_mut_unchecked(1..3).fill(1.0);
            assert_eq!(array.rows_unchecked(0..2), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
            array.view_mut_unchecked()[[3, 2]] = 5.0;
            assert_eq!(array.view_unchecked().sum(), 11.0);
            assert_eq!(array.raw_view().shape(), &[4, 3]);
            *array
                .raw_view_mut()
                .deref_into_view_mut()
                .get_mut([0, 0])
                .unwrap() = 2.0;
        }
        assert_eq!(array.get(0), 2.0);
        assert_eq!(array.get_at(&[3, 2]), 5.0);
        // SAFETY: as above.
        unsafe { assert!(array.rows_unchecked(4..4).is_empty()) };
    }

    #[test]
    fn empty_and_zero_dimensional_arrays_have_no_out_of_bounds_element() {
        let empty = SharedArray::<u16>::new(&[0, 4]).unwrap();
        assert!(empty.is_empty() && empty.to_vec().unwrap().is_empty());
        // SAFETY: nobody writes it.
        assert_eq!(unsafe { empty.view_unchecked() }.shape(), &[0, 4]);
        let scalar = SharedArray::<i32>::new(&[]).unwrap();
        scalar.set(0, -3);
        assert_eq!(
            (scalar.len(), scalar.nrows(), scalar.to_vec().unwrap()),
            (1, 1, vec![-3])
        );
        // SAFETY: nobody writes it.
        assert_eq!(unsafe { scalar.view_unchecked() }.ndim(), 0);
    }

    #[test]
    #[should_panic(expected = "rows 2..5 are out of bounds for an array of 4 rows")]
    fn rows_out_of_bounds_panic_with_the_error_message() {
        SharedArray::<u8>::new(&[4, 2]).unwrap().fill_rows(2..5, 1);
    }

    #[test]
    #[should_panic(expected = "index 8 is out of bounds for 8 elements")]
    fn an_index_out_of_bounds_panics() {
        SharedArray::<u8>::new(&[4, 2]).unwrap().get(8);
    }
}
