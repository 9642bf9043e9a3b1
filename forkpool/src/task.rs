//! Functions across the fork: trampolines, and the encoding of a task's
//! items and of their outcomes.
//!
//! A worker is a fork of the same program image, so a `fn(T) -> R` is valid
//! there at the same address. A task carries two addresses: the user's
//! function, and a trampoline monomorphised for `(T, R)` that decodes the
//! items, calls the function on each under `catch_unwind`, and encodes one
//! outcome per item. Only arguments and results are serialised.
//!
//! Everything is in the pool's own wire format ([`codec`](crate::codec)).
//! Task payload: item count (`u64`), then each item. Result payload: per
//! item, a tag byte and then
//!
//! | tag        | followed by                                             |
//! |------------|---------------------------------------------------------|
//! | `OK`       | the result (`R`)                                        |
//! | `PANICKED` | the panic message (`String`)                            |
//! | `ENCODE`   | why the result could not be encoded (`String`)          |
//! | `DECODE`   | why this item's argument could not be decoded, and the byte count (`(String, u64)`); the rest of the task is not run |

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, decode_from, encode_into};
use crate::error::Error;
use crate::frame::TaskHeader;
use crate::worker::panic_message;

const OK: u8 = 0;
const PANICKED: u8 = 1;
const ENCODE: u8 = 2;
const DECODE: u8 = 3;

/// The monomorphised entry point a worker calls for a task:
/// `(function address, frame body, where its payload starts, output)`.
pub(crate) type Trampoline = fn(usize, Vec<u8>, usize, &mut Vec<u8>);

/// The trampoline for `fn(T) -> R`.
pub(crate) fn trampoline<T: DeserializeOwned, R: Serialize>() -> Trampoline {
    run_task::<T, R>
}

/// Decodes the items of a task, runs `f` on each, encodes the outcomes.
fn run_task<T: DeserializeOwned, R: Serialize>(
    func: usize,
    body: Vec<u8>,
    at: usize,
    out: &mut Vec<u8>,
) {
    // SAFETY: `func` was made by `encode_task` from a `fn(T) -> R`, in the
    // program image this worker is a fork of, and travelled with this very
    // trampoline (monomorphised for the same `T` and `R`); a function pointer
    // stays valid at the same address in a forked child.
    let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(func) };
    run_items(body, at, out, f);
}

/// The body of every trampoline: decodes the items of a task, runs `f` on
/// each under `catch_unwind`, encodes the outcomes.
pub(crate) fn run_items<T: DeserializeOwned, R: Serialize>(
    body: Vec<u8>,
    at: usize,
    out: &mut Vec<u8>,
    mut f: impl FnMut(T) -> R,
) {
    // Decode every item first and free the encoded bytes before running any:
    // a big argument is then held once (decoded), not twice.
    let (items, failure) = decode_items::<T>(&body[at..]);
    drop(body);
    for item in items {
        let mark = out.len();
        out.push(OK);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let r = f(item);
            encode_into(&r, out)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                out.truncate(mark);
                out.push(ENCODE);
                encode_into(&e.to_string(), out).expect("a String always encodes");
            }
            Err(payload) => {
                out.truncate(mark);
                out.push(PANICKED);
                encode_into(&panic_message(payload.as_ref()), out)
                    .expect("a String always encodes");
            }
        }
    }
    if let Some((e, bytes)) = failure {
        decode_failed(out, e, bytes);
    }
}

/// Decodes a task's items: those that decode, and why the next one did not
/// (with the bytes left), if one did not.
fn decode_items<T: DeserializeOwned>(mut rest: &[u8]) -> (Vec<T>, Option<(codec::Error, usize)>) {
    let whole = rest.len();
    let count = match decode_from::<u64>(&mut rest) {
        Ok(v) => v,
        Err(e) => return (Vec::new(), Some((e, whole))),
    };
    // The count comes off the wire: do not trust it for the reservation.
    let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let left = rest.len();
        match decode_from::<T>(&mut rest) {
            Ok(item) => items.push(item),
            Err(e) => return (items, Some((e, left))),
        }
    }
    (items, None)
}

fn decode_failed(out: &mut Vec<u8>, e: codec::Error, bytes: usize) {
    out.push(DECODE);
    encode_into(&(e.to_string(), bytes as u64), out)
        .expect("a tuple of String and u64 always encodes");
}

/// Encodes a task frame for `items`, to be run with `f` in a worker;
/// `first` is the first item's index, for errors. The task id is patched in
/// at submission.
pub(crate) fn encode_task<T, R, I>(f: fn(T) -> R, items: I, first: usize) -> Result<Vec<u8>, Error>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    I::IntoIter: ExactSizeIterator,
{
    encode_call(trampoline::<T, R>(), f as usize, items, first)
}

/// What a task runs: a trampoline, and the address of the user's function
/// it calls (unused by trampolines that know their function by type).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) tramp: Trampoline,
    pub(crate) func: usize,
}

impl Call {
    /// The call of a plain `fn(T) -> R`.
    pub(crate) fn of<T: DeserializeOwned, R: Serialize>(f: fn(T) -> R) -> Call {
        Call {
            tramp: trampoline::<T, R>(),
            func: f as usize,
        }
    }

    /// Encodes a task frame of `items`; see [`encode_call`].
    pub(crate) fn encode<T, I>(self, items: I, first: usize) -> Result<Vec<u8>, Error>
    where
        T: Serialize,
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        encode_call(self.tramp, self.func, items, first)
    }
}

/// Encodes a task frame for `items` (each encoded as a `T`, decoded in the
/// worker as the trampoline's argument type), to be run by `tramp` with the
/// function address `func`.
pub(crate) fn encode_call<T, I>(
    tramp: Trampoline,
    func: usize,
    items: I,
    first: usize,
) -> Result<Vec<u8>, Error>
where
    T: Serialize,
    I: IntoIterator<Item = T>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let header = TaskHeader {
        id: 0,
        tramp: tramp as usize as u64,
        func: func as u64,
    };
    let mut out = Vec::new();
    let started = header.begin(&mut out);
    encode_into(&(items.len() as u64), &mut out).expect("a u64 always encodes");
    for (i, item) in items.enumerate() {
        encode_into(&item, &mut out).map_err(|e| Error::Encode {
            item: first + i,
            what: "argument",
            type_name: type_name::<T>(),
            reason: e.to_string(),
        })?;
    }
    started.finish(&mut out);
    Ok(out)
}

/// Decodes the outcomes of a task of `count` items whose first item has
/// index `first`, passing one `Result` per item, in order, to `each`.
/// `arg_type` names the argument type for decode errors reported by the
/// worker.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    mut payload: &[u8],
    count: usize,
    first: usize,
    pid: i32,
    arg_type: &'static str,
    mut each: impl FnMut(Result<R, Error>),
) {
    let end = first + count;
    for item in first..end {
        let outcome = match payload.split_first() {
            None => Err(Error::Frame {
                pid,
                detail: format!(
                    "the result of a {count}-item task ends after {} outcomes",
                    item - first
                ),
            }),
            Some((&tag, rest)) => {
                payload = rest;
                decode_one::<R>(&mut payload, tag, item, pid, arg_type)
            }
        };
        // After an argument that did not decode, or a result or outcome
        // that did not, the rest of the payload cannot be found: the same
        // error stands for the remaining items.
        let fatal = match &outcome {
            Err(Error::Decode { .. } | Error::Frame { .. }) => outcome.as_ref().err().cloned(),
            _ => None,
        };
        each(outcome);
        if let Some(e) = fatal {
            (item + 1..end).for_each(|j| each(Err(e.for_item(j))));
            return;
        }
    }
}

/// Decodes one outcome whose tag was `tag`, advancing `payload`.
fn decode_one<R: DeserializeOwned>(
    payload: &mut &[u8],
    tag: u8,
    item: usize,
    pid: i32,
    arg_type: &'static str,
) -> Result<R, Error> {
    let bytes = payload.len();
    let bad = |e: codec::Error| Error::Frame {
        pid,
        detail: format!(
            "the outcome of item {item} (tag {tag}, {bytes} bytes) does not decode: {e}"
        ),
    };
    match tag {
        OK => decode_from::<R>(payload).map_err(|e| Error::Decode {
            item,
            what: "result",
            type_name: type_name::<R>(),
            bytes,
            reason: e.to_string(),
        }),
        PANICKED => {
            let message = decode_from::<String>(payload).map_err(bad)?;
            Err(Error::Panicked { item, pid, message })
        }
        ENCODE => {
            let reason = decode_from::<String>(payload).map_err(bad)?;
            Err(Error::Encode {
                item,
                what: "result",
                type_name: type_name::<R>(),
                reason,
            })
        }
        DECODE => {
            let (reason, bytes) = decode_from::<(String, u64)>(payload).map_err(bad)?;
            Err(Error::Decode {
                item,
                what: "argument",
                type_name: arg_type,
                bytes: bytes as usize,
                reason,
            })
        }
        other => Err(Error::Frame {
            pid,
            detail: format!("unknown outcome tag {other} for item {item}"),
        }),
    }
}
