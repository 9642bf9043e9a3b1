//! Progress bars on map-like calls (feature `progress`, drawn by
//! [`indicatif`]): `pool.progress("what").map(f, items)` is `pool.map(f,
//! items)` with a bar on stderr that moves as results come back.
//!
//! The bar counts items. For the blocking and `_async` forms it moves when
//! a task's results arrive in the parent (a chunk of items at a time); for
//! `imap` forms, as the caller consumes each item. It is hidden when stderr
//! is not a terminal, so logs and tests see only the results.

use std::borrow::Cow;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::arg::Arg;
use crate::async_result::AsyncResult;
use crate::error::Result;
use crate::imap::IMap;
use crate::pool::Pool;
use crate::starmap::StarFn;

/// The style of the bars [`Pool::progress`] makes.
const TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len} items, {per_sec}, eta {eta}";
/// The style when the number of items is not known up front.
const TEMPLATE_OPEN: &str = "{msg} {pos} items, {per_sec}";

/// A bar of `len` items (or of unknown length), labelled `what`.
fn default_bar(what: Cow<'static, str>) -> ProgressBar {
    let bar = ProgressBar::no_length();
    bar.set_message(what);
    bar
}

/// Gives `bar` its length and, for bars made by [`Pool::progress`], the
/// style that shows it.
fn size(bar: &ProgressBar, styled: bool, len: Option<usize>) {
    if let Some(n) = len {
        bar.set_length(n as u64);
    }
    if styled {
        let template = if len.is_some() {
            TEMPLATE
        } else {
            TEMPLATE_OPEN
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }
}

impl Pool {
    /// The pool's map-like calls with a progress bar labelled `what` (on
    /// stderr, hidden when stderr is not a terminal), like mpire's
    /// `progress_bar=True` or `tqdm` around `imap`. Feature `progress`.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let squares = pool.progress("squares").map(|x: u64| x * x, 0..1000)?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok(()) }
    /// ```
    pub fn progress(&self, what: impl Into<Cow<'static, str>>) -> WithProgress<'_> {
        WithProgress {
            pool: self,
            bar: default_bar(what.into()),
            styled: true,
        }
    }

    /// As [`progress`](Self::progress), with a bar of your own (its style,
    /// its draw target, a `MultiProgress` it belongs to). Its length is set
    /// to the number of items when that is known; how it ends follows its
    /// [`ProgressFinish`](indicatif::ProgressFinish) setting.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// use indicatif::{ProgressBar, ProgressDrawTarget};
    ///
    /// let pool = forkpool::Pool::new(2)?;
    /// let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    /// let lens = pool.progress_bar(bar.clone()).map(|s: String| s.len(), ["a", "bb"].map(String::from))?;
    /// assert_eq!(lens, [1, 2]);
    /// assert_eq!((bar.position(), bar.length()), (2, Some(2)));
    /// # Ok(()) }
    /// ```
    pub fn progress_bar(&self, bar: ProgressBar) -> WithProgress<'_> {
        WithProgress {
            pool: self,
            bar,
            styled: false,
        }
    }
}

/// A [`Pool`]'s map-like calls, each with a progress bar: made by
/// [`Pool::progress`] or [`Pool::progress_bar`]. Each call takes the bar
/// (one bar, one call).
#[must_use = "a progress view does nothing until one of its calls"]
#[derive(Debug)]
pub struct WithProgress<'p> {
    pool: &'p Pool,
    bar: ProgressBar,
    /// The bar is ours: give it the default style.
    styled: bool,
}

impl<'p> WithProgress<'p> {
    /// The bar, to change its message or style before the call.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// [`Pool::map`] with the bar.
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    pub fn map<T, R, A>(self, f: fn(T) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`Pool::map_chunked`] with the bar.
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    pub fn map_chunked<T, R, A>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        size(&self.bar, self.styled, Some(items.len()));
        self.pool
            .map_async_chunked(f, items, chunksize)
            .with_bar(self.bar)
            .get()
    }

    /// [`Pool::map_async`] with the bar: it moves while the handle is
    /// waited for (`get`, `get_timeout` or `.await`).
    pub fn map_async<T, R, A>(
        self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Arg<T>,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        size(&self.bar, self.styled, Some(items.len()));
        self.pool.map_async(f, items).with_bar(self.bar)
    }

    /// [`Pool::starmap`] with the bar.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let sums = pool.progress("sums").starmap(|a: u32, b: u32| a + b, [(1, 2), (3, 4)])?;
    /// assert_eq!(sums, [3, 7]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    pub fn starmap<F, Args>(
        self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<Vec<F::Output>>
    where
        F: StarFn<Args>,
        Args: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        let items: Vec<Args> = items.into_iter().collect();
        size(&self.bar, self.styled, Some(items.len()));
        self.pool.starmap_async(f, items).with_bar(self.bar).get()
    }

    /// [`Pool::map_with`] with the bar.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let table = vec![10u64, 20, 30];
    /// let out = pool.progress("lookups").map_with(table.as_slice(), |t: &[u64], i: usize| t[i], [2, 0])?;
    /// assert_eq!(out, [30, 10]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::map_with`].
    pub fn map_with<C, T, R>(
        self,
        ctx: &C,
        f: fn(&C, T) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>>
    where
        C: ?Sized + Serialize + ToOwned,
        C::Owned: DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        size(&self.bar, self.styled, Some(items.len()));
        self.pool
            .map_with_async(ctx, f, items)
            .with_bar(self.bar)
            .get()
    }

    /// [`Pool::imap_auto`] with the bar.
    pub fn imap_auto<T, R, I>(
        self,
        f: fn(T) -> R,
        items: I,
    ) -> Progressed<IMap<'p, T, R, I::IntoIter>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        size(&self.bar, self.styled, exact_len(&items));
        Progressed::new(self.pool.imap_auto(f, items), self.bar)
    }

    /// [`Pool::imap_unordered_auto`] with the bar.
    pub fn imap_unordered_auto<T, R, I>(
        self,
        f: fn(T) -> R,
        items: I,
    ) -> Progressed<IMap<'p, T, R, I::IntoIter>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        size(&self.bar, self.styled, exact_len(&items));
        Progressed::new(self.pool.imap_unordered_auto(f, items), self.bar)
    }

    /// [`Pool::imap`] with the bar, which moves as each item is yielded.
    /// Its length is the input's, when the input iterator knows it exactly.
    ///
    /// ```
    /// # fn main() -> Result<(), forkpool::Error> {
    /// let pool = forkpool::Pool::new(2)?;
    /// let mut total = 0;
    /// for sq in pool.progress("squares").imap(|x: u64| x * x, 0..100, 8) {
    ///     total += sq?;
    /// }
    /// assert_eq!(total, 328_350);
    /// # Ok(()) }
    /// ```
    pub fn imap<T, R, I>(
        self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
    ) -> Progressed<IMap<'p, T, R, I::IntoIter>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        size(&self.bar, self.styled, exact_len(&items));
        Progressed::new(self.pool.imap(f, items, chunksize), self.bar)
    }

    /// [`Pool::imap_unordered`] with the bar, which moves as each item is
    /// yielded.
    pub fn imap_unordered<T, R, I>(
        self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
    ) -> Progressed<IMap<'p, T, R, I::IntoIter>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        size(&self.bar, self.styled, exact_len(&items));
        Progressed::new(self.pool.imap_unordered(f, items, chunksize), self.bar)
    }
}

/// The number of items an iterator will yield, when it says so exactly.
fn exact_len(it: &impl Iterator) -> Option<usize> {
    match it.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

/// An iterator that moves a progress bar one step per item it yields, and
/// finishes the bar when it ends: returned by [`WithProgress::imap`] and
/// [`WithProgress::imap_unordered`].
#[must_use = "iterators are lazy: nothing runs until it is iterated"]
#[derive(Debug)]
pub struct Progressed<I> {
    inner: I,
    bar: ProgressBar,
}

impl<I> Progressed<I> {
    fn new(inner: I, bar: ProgressBar) -> Self {
        Progressed { inner, bar }
    }

    /// The bar.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

impl<I: Iterator> Iterator for Progressed<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next();
        match item {
            Some(_) => self.bar.inc(1),
            None => {
                if !self.bar.is_finished() {
                    self.bar.finish_using_style();
                }
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<I> Drop for Progressed<I> {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}
