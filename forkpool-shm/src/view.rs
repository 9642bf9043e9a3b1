//! `ndarray` views over shared memory.
//!
//! Which view a caller gets says what it may assume:
//!
//! - `RawArrayView`/`RawArrayViewMut` (from any array, safely): shape and
//!   strides only; dereferencing them is `unsafe`, because other processes
//!   may write the memory at any time;
//! - `ArrayView`/`ArrayViewMut` (ordinary views, as numpy users expect):
//!   only where something makes "nobody else writes this" true: the lock of a
//!   [`Locked`](crate::Locked) array, a claim of rows
//!   ([`Rows`](crate::Rows)), or an `unsafe` call whose contract the
//!   caller keeps.
//!
//! All views here are row-major (C order) over contiguous memory, with the
//! array's dynamic shape (`IxDyn`); use `into_dimensionality::<Ix2>()` for a
//! fixed number of axes.

use ndarray::{ArrayView, ArrayViewMut, IxDyn, RawArrayView, RawArrayViewMut};

/// A raw view of `shape` at `ptr`.
///
/// # Safety
///
/// `ptr` is non-null and aligned for `T`, and `[ptr, ptr + product(shape))`
/// lies in one live mapping (for an empty shape: any aligned non-null
/// pointer). The caller then only hands out the raw view, whose use is
/// `unsafe`.
pub(crate) unsafe fn raw<T>(ptr: *const T, shape: &[usize]) -> RawArrayView<T, IxDyn> {
    // SAFETY: the caller's promises are ndarray's requirements for a raw view
    // of a contiguous, row-major block.
    unsafe { RawArrayView::from_shape_ptr(IxDyn(shape), ptr) }
}

/// A raw mutable view of `shape` at `ptr`.
///
/// # Safety
///
/// As for [`raw`].
pub(crate) unsafe fn raw_mut<T>(ptr: *mut T, shape: &[usize]) -> RawArrayViewMut<T, IxDyn> {
    // SAFETY: as in `raw`.
    unsafe { RawArrayViewMut::from_shape_ptr(IxDyn(shape), ptr) }
}

/// A shared view of `shape` at `ptr`, for lifetime `'a`.
///
/// # Safety
///
/// As for [`raw`], and nobody writes the memory during `'a`.
pub(crate) unsafe fn shared<'a, T>(ptr: *const T, shape: &[usize]) -> ArrayView<'a, T, IxDyn> {
    // SAFETY: the caller promises a live, aligned block nobody writes during 'a.
    unsafe { ArrayView::from_shape_ptr(IxDyn(shape), ptr) }
}

/// An exclusive view of `shape` at `ptr`, for lifetime `'a`.
///
/// # Safety
///
/// As for [`raw`], and nobody else reads or writes the memory during `'a`.
pub(crate) unsafe fn exclusive<'a, T>(ptr: *mut T, shape: &[usize]) -> ArrayViewMut<'a, T, IxDyn> {
    // SAFETY: the caller promises a live, aligned block used by nobody else
    // during 'a.
    unsafe { ArrayViewMut::from_shape_ptr(IxDyn(shape), ptr) }
}
