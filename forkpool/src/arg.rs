//! [`Arg`]: items given by reference (or in a borrowed form) to a function
//! that takes them owned, encoded in place instead of cloned.

use serde::Serialize;

/// An item that can be sent to a function taking a `T`: its encoding is
/// the encoding of a `T`, which the worker decodes.
///
/// Implemented for `T` itself, for `&T` (so `pool.map(f, &items)` works
/// for a `Vec<T>` or a `[T]` without cloning a single item), for `&str`
/// where `T` is `String`, and for `&[U]` where `T` is `Vec<U>`.
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// fn str_len(s: String) -> usize {
///     s.len()
/// }
/// let pool = forkpool::Pool::new(2)?;
/// let words: Vec<String> = ["a", "bb", "ccc"].map(String::from).to_vec();
/// assert_eq!(pool.map(str_len, &words)?, [1, 2, 3]); // encoded in place
/// assert_eq!(pool.map(str_len, &words[1..])?, [2, 3]);
/// assert_eq!(pool.map(str_len, ["x", "yy"])?, [1, 2]); // &str for String
/// assert_eq!(words.len(), 3); // still ours
/// # Ok(()) }
/// ```
///
/// Implementing it for a type of your own is safe: it needs only that
/// the type's `Serialize` writes what `T`'s `Deserialize` reads (a mismatch
/// is a decode error for that item, never a wrong value of another type).
pub trait Arg<T>: Serialize {}

impl<T: Serialize> Arg<T> for T {}

impl<T: Serialize> Arg<T> for &T {}

impl Arg<String> for &str {}

impl<U: Serialize> Arg<Vec<U>> for &[U] {}
