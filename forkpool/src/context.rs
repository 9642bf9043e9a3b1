//! [`Context`]: a value made at any time (after the pool started too) that
//! every task of a call can read, shipped to each worker once, not with
//! every task: Python's `functools.partial(f, table)`, mpire's
//! `shared_objects`, without a `static`.
//!
//! The value is encoded once, into a `memfd` the parent holds. What travels
//! with each item is a 24-byte reference: the parent's pid, the memfd's
//! descriptor number, an id and the length. A worker that meets a reference
//! it has not seen reads the bytes once, through `/proc/<parent>/fd/<fd>`
//! (a process may open the descriptors of another process of its user, as
//! `ls -l /proc/<pid>/fd` shows), checks the id written at their head,
//! decodes the value and keeps it for the next items; it keeps the last
//! [`KEPT`] contexts it met. The memfd is closed, and its memory freed,
//! when the last `Context` handle in the parent is dropped and no job that
//! carries it is still waiting: `apply`, `map` and their `_async` forms
//! keep the contexts their items carry until their results are in. A task
//! whose context is gone fails with a decode error saying so.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::memfd::{MFdFlags, memfd_create};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;
use crate::error::{Error, Result};
use crate::fds::PoolFd;

/// How many contexts a worker keeps decoded (the most recent ones).
pub(crate) const KEPT: usize = 4;
/// What the memfd starts with, before the id and the encoded value.
const MAGIC: u64 = u64::from_le_bytes(*b"fpctx\0\0\x01");
/// Bytes of the memfd's head: magic and id.
const HEAD: usize = 16;

/// Ids of the contexts this process made.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a context's bytes are: what travels with each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ref {
    pid: u32,
    fd: i32,
    id: u64,
    len: u64,
}

struct Inner<C> {
    at: Ref,
    /// The memfd, in the process that made the context.
    memfd: Option<Arc<PoolFd>>,
    /// The value: always in a worker; in the parent, unless the context
    /// was made from a borrowed value (inside `map_with`).
    value: Option<Arc<C>>,
}

/// A value that every task of a call can read, made at any time and sent
/// to each worker once (not with every task): pass `ctx.clone()` along
/// with the items, and the function reads it by `Deref`.
///
/// [`Pool::map_with`](crate::Pool::map_with) and
/// [`Pool::apply_with`](crate::Pool::apply_with) do this for you; a
/// `Context` of your own works with every call (`imap`, `starmap`,
/// `apply_async`, ...), and across calls.
///
/// Cloning is cheap (a reference count). The value is encoded once, into
/// a memory file the parent holds until the last clone is dropped (a job
/// whose items carry a clone keeps it until its results are in, an `imap`
/// as long as it lives); each worker reads it once and keeps it decoded
/// (its last 4 contexts).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), forkpool::Error> {
/// use forkpool::{Context, Pool};
///
/// fn lookup((table, i): (Context<Vec<u64>>, usize)) -> u64 {
///     table[i]
/// }
///
/// let pool = Pool::new(2)?; // the pool exists before the table does
/// let table = Context::new((0..1000u64).map(|x| x * x).collect::<Vec<_>>())?;
/// let squares: Vec<u64> = pool
///     .imap(lookup, (0..1000).map(|i| (table.clone(), i)), 16)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(squares[999], 998_001);
/// assert_eq!(table.len(), 1000); // the parent reads it too
/// # Ok(()) }
/// ```
pub struct Context<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Context<C> {
    fn clone(&self) -> Self {
        Context {
            inner: self.inner.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Context<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.inner.at.id)
            .field("bytes", &self.inner.at.len)
            .field("value", &self.inner.value)
            .finish()
    }
}

impl<C: Serialize> Context<C> {
    /// Encodes `value` once, into a memory file that the workers read it
    /// from.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] (item 0) if the value does not encode;
    /// [`Error::Io`] if the memory file cannot be made or written (no
    /// memory, no descriptors).
    pub fn new(value: C) -> Result<Context<C>> {
        let mut ctx = Context::<C>::encode(&value)?;
        Arc::get_mut(&mut ctx.inner).expect("not shared yet").value = Some(Arc::new(value));
        Ok(ctx)
    }
}

impl<C> Context<C> {
    /// A context of a borrowed value that decodes as a `C` (`value` may be
    /// a `[u64]` for a `C` of `Vec<u64>`): shipped to the workers, not
    /// readable in this process (`map_with`'s, which never hands it out).
    pub(crate) fn encode<B: Serialize + ?Sized>(value: &B) -> Result<Context<C>> {
        let mut bytes = Vec::with_capacity(HEAD + 64);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        codec::encode_into(value, &mut bytes).map_err(|e| Error::Encode {
            item: 0,
            what: "context",
            type_name: std::any::type_name::<B>(),
            reason: e.to_string(),
        })?;
        let [memfd] = PoolFd::create(|| {
            memfd_create(c"forkpool-context", MFdFlags::MFD_CLOEXEC).map(|fd| [fd])
        })
        .map_err(|e| Error::io("creating the memory file of a context", e))?;
        let mut file = std::fs::File::from(
            memfd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io("writing a context", e))?,
        );
        file.write_all(&bytes)
            .map_err(|e| Error::io("writing a context", e))?;
        drop(file);
        let at = Ref {
            pid: std::process::id(),
            fd: memfd.as_fd().as_raw_fd(),
            id,
            len: (bytes.len() - HEAD) as u64,
        };
        Ok(Context {
            inner: Arc::new(Inner {
                at,
                memfd: Some(Arc::new(memfd)),
                value: None,
            }),
        })
    }
}

impl<C> Context<C> {
    /// Bytes of the encoded value (what each worker reads once).
    pub fn encoded_len(&self) -> u64 {
        self.inner.at.len
    }
}

impl<C> Deref for Context<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.inner
            .value
            .as_deref()
            .expect("a context made by Context::new or received in a worker holds its value")
    }
}

impl<C> Serialize for Context<C> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if let Some(memfd) = &self.inner.memfd {
            SHIPPED.with_borrow_mut(|shipped| {
                if let Some(list) = shipped
                    && !list.iter().any(|m| Arc::ptr_eq(m, memfd))
                {
                    list.push(memfd.clone());
                }
            });
        }
        self.inner.at.serialize(s)
    }
}

thread_local! {
    /// While a job's items are encoded: the memory files of the contexts
    /// they refer to, for the job to keep open until its tasks have run.
    static SHIPPED: RefCell<Option<Vec<Arc<PoolFd>>>> = const { RefCell::new(None) };
}

/// The memory files a job's tasks refer to: kept open by the job's handle,
/// so `pool.apply(f, (ctx, x))`, which gives away the last handle of
/// `ctx`, still works.
#[derive(Debug, Default)]
pub(crate) struct Shipped(Vec<Arc<PoolFd>>);

/// Runs `encode` (which encodes a job's items) and returns, with its
/// result, the memory files of the contexts the items referred to.
pub(crate) fn shipping<R>(encode: impl FnOnce() -> R) -> (R, Shipped) {
    struct Restore(Option<Vec<Arc<PoolFd>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SHIPPED.with_borrow_mut(|s| *s = previous);
        }
    }
    let restore = Restore(SHIPPED.with_borrow_mut(|s| s.replace(Vec::new())));
    let r = encode();
    let got = SHIPPED.with_borrow_mut(|s| s.take()).unwrap_or_default();
    drop(restore);
    (r, Shipped(got))
}

impl Shipped {
    /// Adds `more`, without repeating a file already kept.
    pub(crate) fn absorb(&mut self, more: Shipped) {
        for m in more.0 {
            if !self.0.iter().any(|k| Arc::ptr_eq(k, &m)) {
                self.0.push(m);
            }
        }
    }

    /// Whether no context was referred to.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, C: DeserializeOwned + 'static> Deserialize<'de> for Context<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let at = Ref::deserialize(d)?;
        resolve(at).map_err(serde::de::Error::custom)
    }
}

thread_local! {
    /// The contexts this process decoded, most recent last: `Arc<Inner<C>>`
    /// boxed as `Any`, by reference.
    static DECODED: RefCell<VecDeque<(Ref, Box<dyn Any>)>> = const { RefCell::new(VecDeque::new()) };
}

/// The context `at` refers to: from this thread's cache, or read and
/// decoded now.
fn resolve<C: DeserializeOwned + 'static>(at: Ref) -> std::result::Result<Context<C>, String> {
    let hit = DECODED.with_borrow(|cache| {
        cache
            .iter()
            .find(|(r, _)| *r == at)
            .and_then(|(_, any)| any.downcast_ref::<Arc<Inner<C>>>().cloned())
    });
    if let Some(inner) = hit {
        return Ok(Context { inner });
    }
    let value: C = read(at)?;
    let inner = Arc::new(Inner {
        at,
        memfd: None,
        value: Some(Arc::new(value)),
    });
    DECODED.with_borrow_mut(|cache| {
        if cache.len() == KEPT {
            cache.pop_front();
        }
        cache.push_back((at, Box::new(inner.clone())));
    });
    Ok(Context { inner })
}

/// Reads and decodes the context `at` from the memfd of the process that
/// made it.
fn read<C: DeserializeOwned>(at: Ref) -> std::result::Result<C, String> {
    let path = format!("/proc/{}/fd/{}", at.pid, at.fd);
    let gone = |why: String| {
        format!(
            "context {} ({} bytes) could not be read from {path}: {why} \
             (was every Context handle dropped in the parent before the task ran?)",
            at.id, at.len
        )
    };
    let file = std::fs::File::open(&path).map_err(|e| gone(e.to_string()))?;
    let want = HEAD as u64 + at.len;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(want as usize)
        .map_err(|_| gone(format!("no memory for {want} bytes")))?;
    file.take(want + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| gone(e.to_string()))?;
    let head_ok = bytes.len() as u64 == want
        && bytes[..8] == MAGIC.to_le_bytes()
        && bytes[8..HEAD] == at.id.to_le_bytes();
    if !head_ok {
        return Err(gone(format!(
            "the descriptor holds {} bytes that are not this context",
            bytes.len()
        )));
    }
    let mut rest = &bytes[HEAD..];
    codec::decode_from::<C>(&mut rest).map_err(|e| {
        format!(
            "context {} ({} bytes) does not decode as `{}`: {e}",
            at.id,
            at.len,
            std::any::type_name::<C>()
        )
    })
}

/// What [`Pool::imap_with`](crate::Pool::imap_with) and
/// [`Pool::imap_unordered_with`](crate::Pool::imap_unordered_with) return:
/// an [`IMap`](crate::IMap) over the items paired with the context `C`.
pub type IMapWith<'p, C, T, R, I> = crate::IMap<'p, (Context<C>, T), R, WithContext<C, I>>;

/// The input of [`Pool::imap_with`](crate::Pool::imap_with): each item of
/// `I`, paired with the context.
#[derive(Debug)]
pub struct WithContext<C, I> {
    ctx: Context<C>,
    items: I,
}

impl<C, I> WithContext<C, I> {
    pub(crate) fn new(ctx: Context<C>, items: I) -> Self {
        WithContext { ctx, items }
    }
}

impl<C, I: Iterator> Iterator for WithContext<C, I> {
    type Item = (Context<C>, I::Item);

    fn next(&mut self) -> Option<Self::Item> {
        self.items.next().map(|t| (self.ctx.clone(), t))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

/// The trampoline of `fn(&C, T) -> R` over items `(Context<C::Owned>, T)`
/// (`C` may be unsized: a `[u64]` context travels and decodes as a
/// `Vec<u64>`, which the function borrows).
pub(crate) fn with_call<C, T, R>(f: fn(&C, T) -> R) -> crate::task::Call
where
    C: ?Sized + ToOwned,
    C::Owned: DeserializeOwned + 'static,
    T: DeserializeOwned,
    R: Serialize,
{
    crate::task::Call {
        tramp: run_with::<C, T, R>,
        func: f as usize,
    }
}

fn run_with<C, T, R>(
    func: usize,
    body: crate::frame::Body,
    at: usize,
    out: &mut Vec<u8>,
) -> Option<crate::codec::RunAt>
where
    C: ?Sized + ToOwned,
    C::Owned: DeserializeOwned + 'static,
    T: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `func` was made by `with_call` from a `fn(&C, T) -> R`, in the
    // program image this worker is a fork of, and travelled with this very
    // trampoline (monomorphised for the same `C`, `T` and `R`); a function
    // pointer stays valid at the same address in a forked child.
    let f = unsafe { std::mem::transmute::<usize, fn(&C, T) -> R>(func) };
    crate::task::run_items(body, at, out, |(ctx, t): (Context<C::Owned>, T)| {
        f(std::borrow::Borrow::borrow(&*ctx), t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_to_a_closed_or_foreign_descriptor_is_an_error_not_a_value() {
        let ctx = Context::new(vec![1u64, 2, 3]).unwrap();
        let at = ctx.inner.at;
        // The right file: decodes.
        assert_eq!(*read::<Vec<u64>>(at).unwrap(), [1, 2, 3]);
        // Another id on the same descriptor: refused by the head check.
        let wrong_id = Ref {
            id: at.id + 1_000_000,
            ..at
        };
        let e = read::<Vec<u64>>(wrong_id).unwrap_err();
        assert!(e.contains("not this context"), "{e}");
        // A descriptor that is not open.
        drop(ctx);
        let e = read::<Vec<u64>>(at).unwrap_err();
        assert!(e.contains("was every Context handle dropped"), "{e}");
    }
}
