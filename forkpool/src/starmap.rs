//! [`Pool::starmap`](crate::Pool::starmap): functions of 2, 3 or 4
//! arguments, each call's arguments given as one tuple, like Python's
//! `Pool.starmap`.
//!
//! `map` takes a `fn(T) -> R` pointer, which a `fn` item coerces to. A
//! method generic over the number of arguments cannot ask for a pointer
//! type (a `fn` item does not coerce to a type parameter), so `starmap`
//! takes the function's own type `F` and requires it to be zero-sized: a
//! `fn` item, or a closure that captures nothing. Such a type *is* its
//! function: the trampoline monomorphised for `F` knows which code to run
//! without an address, and a value of `F` has no bytes to carry. A closure
//! that captures a value is refused when the program is compiled.

use std::ptr::NonNull;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task::{Call, run_items};

mod sealed {
    /// Keeps [`StarFn`](super::StarFn) implemented only where this crate
    /// implements it.
    pub trait Sealed<Args> {}
}

/// A function of 2, 3 or 4 arguments that
/// [`Pool::starmap`](crate::Pool::starmap) can run in a worker, called with
/// the arguments of one tuple: a `fn` item or a closure that captures
/// nothing (it must be zero-sized; anything else is a compile error).
///
/// Implemented for every `F: Fn(A, B) -> R`, `Fn(A, B, C) -> R` and
/// `Fn(A, B, C, D) -> R` that is `Copy + 'static`, with `Args` the tuple
/// `(A, B)`, `(A, B, C)` or `(A, B, C, D)`.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// fn clamp(x: i64, lo: i64, hi: i64) -> i64 {
///     x.clamp(lo, hi)
/// }
/// let pool = forkpool::Pool::new(2)?;
/// let out = pool.starmap(clamp, [(5, 0, 3), (-2, 0, 3), (1, 0, 3)])?;
/// assert_eq!(out, [3, 0, 1]);
/// # Ok(()) }
/// ```
///
/// A closure that captures a value does not cross the fork:
///
/// ```compile_fail
/// # fn main() -> Result<(), forkpool::Error> {
/// let pool = forkpool::Pool::new(2)?;
/// let base = 10u64;
/// let out = pool.starmap(move |a: u64, b: u64| a + b + base, [(1, 2)])?;
/// # Ok(()) }
/// ```
pub trait StarFn<Args>: sealed::Sealed<Args> + Copy + 'static {
    /// What the function returns.
    type Output;

    /// Calls the function with the tuple's elements as its arguments.
    fn call_with(self, args: Args) -> Self::Output;
}

macro_rules! star_fn {
    ($($arg:ident),+) => {
        impl<F, R, $($arg),+> sealed::Sealed<($($arg,)+)> for F
        where
            F: Fn($($arg),+) -> R + Copy + 'static,
        {
        }

        impl<F, R, $($arg),+> StarFn<($($arg,)+)> for F
        where
            F: Fn($($arg),+) -> R + Copy + 'static,
        {
            type Output = R;

            #[allow(non_snake_case)]
            fn call_with(self, ($($arg,)+): ($($arg,)+)) -> R {
                self($($arg),+)
            }
        }
    };
}

star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);

/// The call of a zero-sized function `F` on tuples `Args`.
pub(crate) fn star_call<F, Args>() -> Call
where
    F: StarFn<Args>,
    Args: DeserializeOwned,
    F::Output: Serialize,
{
    const {
        assert!(
            size_of::<F>() == 0,
            "starmap needs a fn item or a closure that captures nothing: \
             a captured value cannot cross the fork (pass it in the tuple)"
        )
    };
    Call {
        tramp: run_star::<F, Args>,
        func: 0,
    }
}

/// The trampoline of [`star_call`].
fn run_star<F, Args>(
    _func: usize,
    body: crate::frame::Body,
    at: usize,
    out: &mut Vec<u8>,
) -> Option<crate::codec::RunAt>
where
    F: StarFn<Args>,
    Args: DeserializeOwned,
    F::Output: Serialize,
{
    // SAFETY: `F` is zero-sized (`star_call`, the only way to this
    // trampoline, asserts it at compile time), so a value of it has no
    // bytes: reading one from an aligned, non-null (dangling) pointer reads
    // nothing and is valid. Making the value is allowed: `F` is `Copy`, the
    // caller of `starmap` handed the parent a value of it, and this worker
    // is a fork of that same program, where `F` (a `fn` item or a closure
    // without captures) has no state to be wrong about.
    let f: F = unsafe { NonNull::<F>::dangling().read() };
    run_items(body, at, out, move |args: Args| f.call_with(args))
}
