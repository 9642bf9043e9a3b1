//! Tasks on the wire: what rank 0 sends a worker rank, and what comes back.
//!
//! As in `forkpool`, a task carries two functions: the user's `fn(T) -> R`
//! and a trampoline monomorphised for `(T, R)` that decodes the items,
//! calls the function on each under `catch_unwind`, and encodes one
//! outcome per item. Here both travel as [`FnOffset`]s, not addresses.
//!
//! Task message: postcard `TaskHeader`, then the item count (postcard
//! `u64`) and each item (postcard). Result message: the task id (postcard
//! `u64`), then per item a tag byte and
//!
//! | tag        | followed by                                    |
//! |------------|------------------------------------------------|
//! | `OK`       | the result (postcard `R`)                      |
//! | `PANICKED` | the panic message (postcard `String`)          |
//! | `ENCODE`   | why the result would not encode (`String`)     |
//! | `DECODE`   | why the argument would not decode (`String`); the rest of the task is not run |

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::image::FnOffset;

const OK: u8 = 0;
const PANICKED: u8 = 1;
const ENCODE: u8 = 2;
const DECODE: u8 = 3;

/// The monomorphised entry point a worker rank calls for a task:
/// `(function address, encoded items, output)`.
type Trampoline = fn(usize, &[u8], &mut Vec<u8>);

/// What precedes a task's items.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskHeader {
    /// The task's id, echoed in its result.
    pub(crate) id: u64,
    /// The trampoline for the function's types.
    pub(crate) trampoline: FnOffset,
    /// The user's function.
    pub(crate) function: FnOffset,
}

/// A function ready to be sent: its offset and its trampoline's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sendable {
    trampoline: FnOffset,
    function: FnOffset,
}

impl Sendable {
    /// Checks that `f` and its trampoline lie in the executable.
    pub(crate) fn new<T: DeserializeOwned, R: Serialize>(f: fn(T) -> R) -> Result<Self, Error> {
        let tramp: Trampoline = run_task::<T, R>;
        Ok(Sendable {
            trampoline: FnOffset::of(tramp as usize)?,
            function: FnOffset::of(f as usize)?,
        })
    }
}

/// Encodes the task `id` of `items` for `f`; `first` is the index of the
/// first item, for errors.
pub(crate) fn encode_task<T: Serialize>(
    f: Sendable,
    id: u64,
    items: &mut dyn ExactSizeIterator<Item = T>,
    first: usize,
) -> Result<Vec<u8>, Error> {
    let header = TaskHeader {
        id,
        trampoline: f.trampoline,
        function: f.function,
    };
    let mut out = postcard::to_stdvec(&header).expect("a header always encodes");
    encode_into(&(items.len() as u64), &mut out).expect("a u64 always encodes");
    for (i, item) in items.enumerate() {
        encode_into(&item, &mut out).map_err(|e| Error::Encode {
            item: first + i,
            what: "argument",
            type_name: type_name::<T>(),
            reason: e.to_string(),
        })?;
    }
    Ok(out)
}

/// A postcard flavor that appends to a borrowed `Vec`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`; on error `out` is
/// left as it was.
fn encode_into<V: Serialize + ?Sized>(value: &V, out: &mut Vec<u8>) -> postcard::Result<()> {
    let mark = out.len();
    let r = postcard::serialize_with_flavor(value, Append(out));
    if r.is_err() {
        out.truncate(mark);
    }
    r
}

/// Appends a string (always encodes).
fn encode_str(s: &str, out: &mut Vec<u8>) {
    encode_into(s, out).expect("a str always encodes");
}

/// On a worker rank: runs the task in `message` and returns the result
/// message.
///
/// # Safety
///
/// `message` must come from rank 0 of a job whose ranks all run this
/// executable (`Pool::world` checks the [`ImageId`](crate::ImageId)s before
/// any task is sent): its offsets then name a trampoline and a function of
/// matching types in this image.
pub(crate) unsafe fn execute(message: &[u8]) -> Result<Vec<u8>, String> {
    let (header, items) = postcard::take_from_bytes::<TaskHeader>(message)
        .map_err(|e| format!("a task header would not decode: {e}"))?;
    let mut out = postcard::to_stdvec(&header.id).expect("a u64 always encodes");
    // SAFETY: by the caller's promise, the offset names a `Trampoline`
    // made by `Sendable::new` in this same executable.
    let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(header.trampoline.address()) };
    tramp(header.function.address(), items, &mut out);
    Ok(out)
}

/// The id of the task a result message answers, and its outcomes.
pub(crate) fn result_id(message: &[u8]) -> Result<(u64, &[u8]), String> {
    postcard::take_from_bytes::<u64>(message)
        .map_err(|e| format!("a result message has no task id: {e}"))
}

/// Decodes a task's items, runs `f` on each, encodes the outcomes.
fn run_task<T: DeserializeOwned, R: Serialize>(func: usize, input: &[u8], out: &mut Vec<u8>) {
    // SAFETY: `func` was made by `Sendable::new` from a `fn(T) -> R` of
    // this executable and travelled with this very trampoline,
    // monomorphised for the same `T` and `R` (see `execute`).
    let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(func) };
    let (count, mut rest) = match postcard::take_from_bytes::<u64>(input) {
        Ok(v) => v,
        Err(e) => {
            out.push(DECODE);
            encode_str(&format!("the item count: {e}"), out);
            return;
        }
    };
    for _ in 0..count {
        let item = match postcard::take_from_bytes::<T>(rest) {
            Ok((item, r)) => {
                rest = r;
                item
            }
            Err(e) => {
                out.push(DECODE);
                encode_str(&format!("{e} (type {})", type_name::<T>()), out);
                return;
            }
        };
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
                encode_str(&e.to_string(), out);
            }
            Err(payload) => {
                out.truncate(mark);
                out.push(PANICKED);
                encode_str(&panic_message(payload.as_ref()), out);
            }
        }
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Decodes the outcomes of a task of `count` items whose first item has
/// index `first`, run on `rank`, passing one `Result` per item, in order,
/// to `each`.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    mut payload: &[u8],
    count: usize,
    first: usize,
    rank: usize,
    mut each: impl FnMut(usize, Result<R, Error>),
) {
    for item in first..first + count {
        let bad = |reason: String| Error::Decode { item, rank, reason };
        let outcome = match payload.split_first() {
            None => Err(bad(format!(
                "the result of a {count}-item task ends after {} outcomes",
                item - first
            ))),
            Some((&tag, rest)) => {
                payload = rest;
                decode_one::<R>(&mut payload, tag, item, rank)
            }
        };
        // After an outcome that would not decode, the rest cannot be found.
        if let Err(e @ Error::Decode { .. }) = &outcome {
            let e = e.clone();
            each(item, outcome);
            (item + 1..first + count).for_each(|j| each(j, Err(e.for_item(j))));
            return;
        }
        each(item, outcome);
    }
}

fn decode_one<R: DeserializeOwned>(
    payload: &mut &[u8],
    tag: u8,
    item: usize,
    rank: usize,
) -> Result<R, Error> {
    let bad = |reason: String| Error::Decode { item, rank, reason };
    fn take<V: DeserializeOwned>(payload: &mut &[u8]) -> Result<V, String> {
        let (v, rest) = postcard::take_from_bytes::<V>(payload).map_err(|e| e.to_string())?;
        *payload = rest;
        Ok(v)
    }
    match tag {
        OK => {
            take::<R>(payload).map_err(|e| bad(format!("the result ({}): {e}", type_name::<R>())))
        }
        PANICKED => Err(Error::Panicked {
            item,
            rank,
            message: take::<String>(payload).map_err(bad)?,
        }),
        ENCODE => Err(Error::Encode {
            item,
            what: "result",
            type_name: type_name::<R>(),
            reason: take::<String>(payload).map_err(bad)?,
        }),
        DECODE => Err(bad(format!(
            "the argument would not decode on the worker: {}",
            take::<String>(payload).map_err(bad)?
        ))),
        other => Err(bad(format!("unknown outcome tag {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halve(x: u32) -> u32 {
        assert!(x.is_multiple_of(2), "{x} is odd");
        x / 2
    }

    fn round_trip<T: Serialize + DeserializeOwned, R: Serialize + DeserializeOwned>(
        f: fn(T) -> R,
        items: Vec<T>,
        first: usize,
    ) -> Vec<(usize, Result<R, Error>)> {
        let n = items.len();
        let msg = encode_task(Sendable::new(f).unwrap(), 7, &mut items.into_iter(), first).unwrap();
        // SAFETY: the message was made just above, in this executable.
        let result = unsafe { execute(&msg) }.unwrap();
        let (id, outcomes) = result_id(&result).unwrap();
        assert_eq!(id, 7);
        let mut got = Vec::new();
        decode_outcomes::<R>(outcomes, n, first, 3, |i, r| got.push((i, r)));
        got
    }

    #[test]
    fn a_task_runs_from_its_offsets_and_its_results_come_back_in_order() {
        let got = round_trip(halve, vec![2, 4, 10], 5);
        let got: Vec<(usize, u32)> = got.into_iter().map(|(i, r)| (i, r.unwrap())).collect();
        assert_eq!(got, [(5, 1), (6, 2), (7, 5)]);
    }

    #[test]
    fn a_panic_fails_its_item_only() {
        let got = round_trip(halve, vec![2, 3, 4], 0);
        assert_eq!(got[0].1, Ok(1));
        match &got[1].1 {
            Err(Error::Panicked {
                item: 1,
                rank: 3,
                message,
            }) => assert!(message.contains("3 is odd"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(got[2].1, Ok(2));
    }

    #[test]
    fn an_argument_that_does_not_decode_fails_the_rest_of_its_task() {
        // Strings sent, u8 expected: a length-prefixed string is no u8...
        // so encode as `String` and run with a `fn(bool)` trampoline.
        fn not(b: bool) -> bool {
            !b
        }
        let f = Sendable::new(not).unwrap();
        let msg = encode_task(f, 1, &mut [true, false].into_iter(), 0).unwrap();
        let mut bad = msg.clone();
        // The last byte is `false` (0); 7 is no bool.
        *bad.last_mut().unwrap() = 7;
        // SAFETY: made above in this executable.
        let result = unsafe { execute(&bad) }.unwrap();
        let (_, outcomes) = result_id(&result).unwrap();
        let mut got = Vec::new();
        decode_outcomes::<bool>(outcomes, 2, 0, 1, |i, r| got.push((i, r)));
        assert_eq!(got[0], (0, Ok(false)));
        assert!(
            matches!(&got[1].1, Err(Error::Decode { item: 1, reason, .. }) if reason.contains("bool")),
            "{:?}",
            got[1]
        );
    }

    #[test]
    fn a_truncated_result_is_a_decode_error_for_every_missing_item() {
        let mut got = Vec::new();
        decode_outcomes::<u32>(&[OK, 4], 3, 10, 2, |i, r| got.push((i, r)));
        assert_eq!(got[0], (10, Ok(4)));
        assert!(matches!(got[1].1, Err(Error::Decode { item: 11, .. })));
        assert!(matches!(got[2].1, Err(Error::Decode { item: 12, .. })));
    }

    #[test]
    fn a_garbled_header_is_refused_before_anything_runs() {
        // SAFETY: a header that does not decode is refused before any
        // offset is used.
        let e = unsafe { execute(&[]) }.unwrap_err();
        assert!(e.contains("header"), "{e}");
    }
}
