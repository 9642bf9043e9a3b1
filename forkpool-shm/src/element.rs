//! The element types a shared array can hold.
//!
//! A shared array holds plain numbers only: `u8`..`u64`, `i8`..`i64`, `f32` and
//! `f64`. Every bit pattern of these types is a valid value (so memory written
//! by another process, or by numpy, can never be an invalid value), zero bytes
//! are the value zero (so a fresh zero-filled mapping is a zero-filled array),
//! and each has an atomic counterpart of the same size (`AtomicU64` for `u64`,
//! `i64` and `f64`, ...), so every element can be read and written atomically
//! while other processes do the same.
//!
//! The trait is sealed: the guarantees above are what the rest of the crate
//! relies on, so no other type can implement it.

use std::fmt::{Debug, Display};
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering,
};

/// A plain number that can live in a shared array.
///
/// Implemented for `u8`, `u16`, `u32`, `u64`, `i8`, `i16`, `i32`, `i64`, `f32`
/// and `f64`, and sealed against other implementations.
///
/// # Examples
///
/// ```
/// use forkpool_shm::Element;
///
/// assert_eq!(f64::NAME, "f64");
/// assert_eq!(f64::NPY_DESCR, "<f8");
/// assert_eq!(u8::NPY_DESCR, "|u1");
/// ```
pub trait Element:
    sealed::Atomics + Copy + Default + PartialEq + Debug + Display + Send + Sync + 'static
{
    /// The Rust name of the type, as used in error messages (`"f64"`).
    const NAME: &'static str;
    /// The numpy type descriptor of the type in little-endian byte order, as
    /// written in a `.npy` header (`"<f8"` for `f64`, `"|u1"` for `u8`).
    const NPY_DESCR: &'static str;
}

/// The private half of [`Element`]: atomic access to one element through a raw
/// pointer. Lives in a private module so no other crate can implement
/// `Element` or call these functions.
pub(crate) mod sealed {
    use std::sync::atomic::Ordering;

    /// Atomic operations on one element in place.
    ///
    /// Each function's `p` must be non-null, aligned to `size_of::<Self>()`,
    /// and point to memory that is valid for reads and writes for the whole
    /// call and that is only ever accessed atomically, with this element size,
    /// while the call runs.
    pub trait Atomics: Sized {
        /// Atomically loads the element at `p`.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_load(p: *const Self, order: Ordering) -> Self;
        /// Atomically stores `v` at `p`.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_store(p: *mut Self, v: Self, order: Ordering);
        /// Atomically replaces the element at `p` by `v`, returning the old value.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_swap(p: *mut Self, v: Self, order: Ordering) -> Self;
        /// Atomically replaces the element at `p` by `new` if its bits equal
        /// `current`'s; returns the previous value, `Ok` if it was replaced.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_compare_exchange(
            p: *mut Self,
            current: Self,
            new: Self,
            success: Ordering,
            failure: Ordering,
        ) -> Result<Self, Self>;
        /// Atomically adds `v` (wrapping for integers), returning the old value.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_fetch_add(p: *mut Self, v: Self, order: Ordering) -> Self;
        /// Atomically subtracts `v` (wrapping for integers), returning the old value.
        ///
        /// # Safety
        /// See the trait documentation.
        unsafe fn atomic_fetch_sub(p: *mut Self, v: Self, order: Ordering) -> Self;
    }
}

/// `Element` and the atomic accesses shared by every element type, through
/// the atomic integer `$atomic` of the same size: `$to` turns a value into
/// its bits, `$from` back (the identity for integers, `to_bits`/`from_bits`
/// for floats). `$add` and `$sub` are the read-modify-writes.
macro_rules! element {
    ($($t:ty => $atomic:ty, $descr:literal, $to:expr, $from:expr, $add:expr, $sub:expr;)*) => {$(
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            const NPY_DESCR: &'static str = $descr;
        }

        impl sealed::Atomics for $t {
            #[inline]
            unsafe fn atomic_load(p: *const Self, order: Ordering) -> Self {
                // SAFETY: the caller guarantees `p` is aligned and valid and only
                // accessed atomically with this size; the atomic integer has the
                // same size and alignment as the element.
                $from(unsafe { <$atomic>::from_ptr(p.cast_mut().cast()) }.load(order))
            }
            #[inline]
            unsafe fn atomic_store(p: *mut Self, v: Self, order: Ordering) {
                // SAFETY: as in `atomic_load`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.store($to(v), order)
            }
            #[inline]
            unsafe fn atomic_swap(p: *mut Self, v: Self, order: Ordering) -> Self {
                // SAFETY: as in `atomic_load`.
                $from(unsafe { <$atomic>::from_ptr(p.cast()) }.swap($to(v), order))
            }
            #[inline]
            unsafe fn atomic_compare_exchange(
                p: *mut Self,
                current: Self,
                new: Self,
                success: Ordering,
                failure: Ordering,
            ) -> Result<Self, Self> {
                // SAFETY: as in `atomic_load`.
                unsafe { <$atomic>::from_ptr(p.cast()) }
                    .compare_exchange($to(current), $to(new), success, failure)
                    .map($from)
                    .map_err($from)
            }
            #[inline]
            unsafe fn atomic_fetch_add(p: *mut Self, v: Self, order: Ordering) -> Self {
                // SAFETY: as in `atomic_load`.
                $add(unsafe { <$atomic>::from_ptr(p.cast()) }, v, order)
            }
            #[inline]
            unsafe fn atomic_fetch_sub(p: *mut Self, v: Self, order: Ordering) -> Self {
                // SAFETY: as in `atomic_load`.
                $sub(unsafe { <$atomic>::from_ptr(p.cast()) }, v, order)
            }
        }
    )*};
}

/// Integers: their own bits, native wrapping read-modify-writes.
macro_rules! int_elements {
    ($($t:ty => $atomic:ty, $descr:literal;)*) => {
        element! {$(
            $t => $atomic, $descr, |v: $t| v, |v: $t| v,
            <$atomic>::fetch_add, <$atomic>::fetch_sub;
        )*}
    };
}

/// Floats: through their bits; addition is a compare-and-swap loop.
macro_rules! float_elements {
    ($($t:ty => $atomic:ty, $descr:literal;)*) => {$(
        impl FloatAdd for $atomic {
            type Float = $t;
            fn add(&self, v: $t, order: Ordering) -> $t {
                let load = match order {
                    Ordering::Release | Ordering::Relaxed => Ordering::Relaxed,
                    _ => Ordering::Acquire,
                };
                let old = self
                    .fetch_update(order, load, |bits| Some((<$t>::from_bits(bits) + v).to_bits()))
                    .unwrap_or_else(|bits| bits);
                <$t>::from_bits(old)
            }
        }
        element! {
            $t => $atomic, $descr, <$t>::to_bits, <$t>::from_bits,
            <$atomic as FloatAdd>::add, |a: &$atomic, v: $t, o| a.add(-v, o);
        }
    )*};
}

/// A float's atomic addition on the atomic integer of its bits.
trait FloatAdd {
    type Float;
    fn add(&self, v: Self::Float, order: Ordering) -> Self::Float;
}

int_elements! {
    u8 => AtomicU8, "|u1";
    u16 => AtomicU16, "<u2";
    u32 => AtomicU32, "<u4";
    u64 => AtomicU64, "<u8";
    i8 => AtomicI8, "|i1";
    i16 => AtomicI16, "<i2";
    i32 => AtomicI32, "<i4";
    i64 => AtomicI64, "<i8";
}

float_elements! {
    f32 => AtomicU32, "<f4";
    f64 => AtomicU64, "<f8";
}

#[cfg(test)]
mod tests {
    use super::sealed::Atomics;
    use super::*;

    #[test]
    fn float_atomics_work_on_bits() {
        let mut x = -0.0f64;
        let p = &raw mut x;
        // SAFETY: `p` points to a live, aligned local that nothing else touches.
        unsafe {
            assert!(f64::atomic_load(p, Ordering::Relaxed).is_sign_negative());
            assert_eq!(f64::atomic_fetch_add(p, 1.5, Ordering::SeqCst), -0.0);
            assert_eq!(f64::atomic_fetch_sub(p, 0.5, Ordering::SeqCst), 1.5);
            assert_eq!(f64::atomic_swap(p, 4.0, Ordering::SeqCst), 1.0);
            assert_eq!(
                f64::atomic_compare_exchange(p, 3.0, 5.0, Ordering::SeqCst, Ordering::SeqCst),
                Err(4.0)
            );
            assert_eq!(
                f64::atomic_compare_exchange(p, 4.0, 5.0, Ordering::SeqCst, Ordering::SeqCst),
                Ok(4.0)
            );
        }
        assert_eq!(x, 5.0);
    }

    #[test]
    fn integer_fetch_add_wraps() {
        let mut x = 250u8;
        let p = &raw mut x;
        // SAFETY: `p` points to a live, aligned local that nothing else touches.
        unsafe {
            assert_eq!(u8::atomic_fetch_add(p, 10, Ordering::SeqCst), 250);
        }
        assert_eq!(x, 4);
    }
}
