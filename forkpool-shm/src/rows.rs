//! [`Rows`]: the rows a closure holds while a lock or a claim makes ordinary
//! slices and views of shared memory sound.
//!

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use crate::SharedArray;
use crate::element::Element;
use crate::error::ShmError;
use crate::mode::Mode;
use crate::prefault::Access;
use crate::region::Region;

/// Invariant in `'a`: a `Rows` of one scope can never be swapped with one
/// of another.
type Invariant<'a, T> = PhantomData<(fn(&'a ()) -> &'a (), T)>;

/// Rows `[a, b)` of a shared array, held by a lock or a claim for the
/// duration of a closure: an ordinary `&[T]`/`&mut [T]` (through `Deref`)
/// and `ndarray` views.
///
/// Only ever handed to a closure, as `&mut Rows` (exclusive: a lock, an
/// exclusive claim) or `&Rows` (a shared claim).
///
/// # Examples
///
/// ```
/// use forkpool_shm::{Partitioned, SharedArray};
///
/// let array = SharedArray::<u32, Partitioned>::new(&[6, 4])?;
/// array.with_rows_mut(2..4, |rows| {
///     assert_eq!(rows.range(), 2..4);
///     assert_eq!(rows.shape(), [2, 4]);
///     rows.row_mut(3).copy_from_slice(&[1, 2, 3, 4]);
///     rows.view_mut()[[0, 0]] = 9; // row 2
/// })?;
/// assert_eq!(array.to_vec()?[8..16], [9, 0, 0, 0, 1, 2, 3, 4]);
/// # Ok::<(), forkpool_shm::ShmError>(())
/// ```
///
/// # Why a closure, not a guard
///
/// `forkpool`'s `Pool::build()` forks, and it is safe. Anything `'static`
/// that a caller can move into its `initializer` is copied into every
/// worker. A guard that hands out `&mut [T]` cannot stop that: an array in a
/// `static` (or leaked) gives a guard of lifetime `'static`, `Box::leak` of
/// that guard gives a `&'static mut [T]`, and every worker would hold the
/// same `&mut`. So exclusive access exists only inside a closure that
/// receives a borrow it cannot return or store: [`SharedArray::with_lock`]
/// and [`SharedArray::with_rows_mut`] pass `&mut Rows<'_, T>`, whose lifetimes
/// the closure must accept for any caller-chosen scope, so no slice or view
/// taken from it outlives the call. Moving it into a `'static` initializer,
/// or into a `static`, does not compile:
///
/// ```compile_fail
/// use forkpool_shm::{Partitioned, SharedArray};
/// let array = SharedArray::<f64, Partitioned>::new(&[4, 8])?;
/// let array: &'static SharedArray<f64, Partitioned> = Box::leak(Box::new(array));
/// // error: lifetime may not live long enough
/// let rows: &'static mut [f64] = array.with_rows_mut(0..2, |rows| &mut **rows)?;
/// let pool = forkpool::Pool::builder()
///     .processes(2)
///     .initializer(move || rows[0] = 1.0) // every worker would alias `rows`
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ```compile_fail
/// use std::sync::{Mutex, OnceLock};
/// use forkpool_shm::{Locked, SharedArray};
/// static ARRAY: OnceLock<SharedArray<f64, Locked>> = OnceLock::new();
/// static SLOT: Mutex<Option<&'static mut [f64]>> = Mutex::new(None);
/// ARRAY.set(SharedArray::new(&[4])?).unwrap();
/// // error: borrowed data escapes outside of closure
/// ARRAY.get().unwrap().with_lock(|data| *SLOT.lock().unwrap() = Some(&mut **data));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`SharedArray::with_lock`]: crate::SharedArray::with_lock
/// [`SharedArray::with_rows_mut`]: crate::SharedArray::with_rows_mut
pub struct Rows<'a, T: Element> {
    region: &'a Region,
    range: Range<usize>,
    _scope: Invariant<'a, T>,
}

impl<'a, T: Element> Rows<'a, T> {
    /// Rows `range` of `array`.
    ///
    /// # Safety
    ///
    /// `range` is in bounds, and for as long as the `Rows` lives no other
    /// thread or process writes these rows, and (where the caller will hand
    /// out `&mut Rows`) none reads them either.
    pub(crate) unsafe fn new<M: Mode>(array: &'a SharedArray<T, M>, range: Range<usize>) -> Self {
        debug_assert!(array.check_rows(&range).is_ok());
        Rows {
            region: array.region(),
            range,
            _scope: PhantomData,
        }
    }

    fn row_len(&self) -> usize {
        self.region.layout().row_len
    }

    /// The rows held, as indices into the whole array.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The shape of the rows held: the array's shape with the first axis cut
    /// to [`range`](Self::range).
    pub fn shape(&self) -> Vec<usize> {
        let mut shape = self.region.layout().shape.to_vec();
        if let Some(first) = shape.first_mut() {
            *first = self.range.len();
        }
        shape
    }

    fn start(&self) -> *mut T {
        let data = self.region.data().cast::<T>().as_ptr();
        // SAFETY: the range is in bounds (`new`'s contract), so the offset is
        // at most the length of the data.
        unsafe { data.add(self.range.start * self.row_len()) }
    }

    /// Row `row` (an index into the whole array) as a slice.
    ///
    /// # Panics
    ///
    /// If `row` is not among the rows held.
    pub fn row(&self, row: usize) -> &[T] {
        let at = self.row_at(row);
        &self[at]
    }

    /// Row `row` (an index into the whole array) as a mutable slice.
    ///
    /// # Panics
    ///
    /// If `row` is not among the rows held.
    pub fn row_mut(&mut self, row: usize) -> &mut [T] {
        let at = self.row_at(row);
        &mut self[at]
    }

    fn row_at(&self, row: usize) -> Range<usize> {
        assert!(
            self.range.contains(&row),
            "row {row} is not among the rows held, {:?}",
            self.range
        );
        let row_len = self.row_len();
        let at = (row - self.range.start) * row_len;
        at..at + row_len
    }

    /// The rows as an `ndarray` view of shape [`shape`](Self::shape).
    pub fn view(&self) -> ArrayView<'_, T, IxDyn> {
        // SAFETY: `new`'s contract: nobody writes these rows while `self`
        // lives; the shape covers exactly the rows held.
        unsafe { crate::view::shared(self.start(), &self.shape()) }
    }

    /// The rows as a mutable `ndarray` view of shape [`shape`](Self::shape).
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, IxDyn> {
        // SAFETY: `&mut Rows` is only handed out under exclusive access
        // (`new`'s contract), and `&mut self` makes this borrow unique.
        unsafe { crate::view::exclusive(self.start(), &self.shape()) }
    }

    /// Maps the rows' pages into this process, writable, in one call (see
    /// [`SharedArray::prefault`](crate::SharedArray::prefault)): do this
    /// before filling fresh rows. It takes `&mut self`: on kernels without
    /// `MADV_POPULATE_WRITE` it touches each page with a write.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::prefault`](crate::SharedArray::prefault).
    pub fn prefault(&mut self) -> Result<(), ShmError> {
        self.prefault_as(Access::Write)
    }

    /// Maps the rows' pages into this process for reading (see
    /// [`SharedArray::prefault_read`](crate::SharedArray::prefault_read)).
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::prefault`](crate::SharedArray::prefault).
    pub fn prefault_read(&self) -> Result<(), ShmError> {
        self.prefault_as(Access::Read)
    }

    fn prefault_as(&self, access: Access) -> Result<(), ShmError> {
        let bytes = self.row_len() * size_of::<T>();
        let (start, end) = (self.range.start * bytes, self.range.end * bytes);
        self.region.prefault(start, end, access)
    }
}

impl<T: Element> Deref for Rows<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let len = self.range.len() * self.row_len();
        // SAFETY: in bounds and aligned, every bit pattern is a valid `T`,
        // and nobody writes these rows while `self` lives (`new`'s contract).
        unsafe { std::slice::from_raw_parts(self.start(), len) }
    }
}

impl<T: Element> DerefMut for Rows<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.range.len() * self.row_len();
        // SAFETY: as in `deref`; `&mut Rows` is only handed out under
        // exclusive access, and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.start(), len) }
    }
}

impl<T: Element> fmt::Debug for Rows<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rows")
            .field("range", &self.range)
            .field("shape", &self.shape())
            .finish_non_exhaustive()
    }
}

/// `Rows` over an array, built directly (as a lock or a claim does): runs
/// under Miri too, which checks its slices and views for undefined
/// behaviour.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_slices_and_views_of_exactly_the_rows_held() {
        let array = SharedArray::<u32>::new(&[5, 2, 3]).unwrap();
        // SAFETY: in bounds; nothing else touches the array while `rows` lives.
        let mut rows = unsafe { Rows::new(&array, 1..4) };
        assert_eq!((rows.range(), rows.shape()), (1..4, vec![3, 2, 3]));
        rows.fill(1);
        rows.row_mut(3).copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        rows.view_mut()[[0, 1, 2]] = 9;
        assert_eq!(rows.row(1), [1, 1, 1, 1, 1, 9]);
        assert_eq!(rows.view().sum(), 14 + 6 + 21);
        assert_eq!(rows.len(), 18);
        assert_eq!(array.to_vec().unwrap()[..6], [0; 6]);
        assert_eq!(array.to_vec().unwrap()[6..12], [1, 1, 1, 1, 1, 9]);
        assert_eq!(array.to_vec().unwrap()[24..], [0; 6]);
        // SAFETY: as above.
        let empty = unsafe { Rows::new(&array, 5..5) };
        assert!(empty.is_empty() && empty.view().is_empty());
    }

    #[test]
    #[should_panic(expected = "row 0 is not among the rows held, 1..4")]
    fn a_row_outside_those_held_panics() {
        let array = SharedArray::<u8>::new(&[5, 2]).unwrap();
        // SAFETY: in bounds; nothing else touches the array.
        let rows = unsafe { Rows::new(&array, 1..4) };
        let _ = rows.row(0);
    }
}
