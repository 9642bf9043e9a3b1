//! The wire format of arguments and results: a serde data format of our own.
//!
//! Both ends of every pipe are forks of one program, so the format does not
//! need to be portable, self-describing or compact; it needs to be fast for
//! the values pools carry, big arrays of plain numbers above all. So:
//!
//! - every number is written at its own fixed width, little-endian (`u8`: 1
//!   byte, `f64`: 8, `usize`: 8): no varints, no per-element branching on
//!   the value;
//! - a sequence, map, string or byte string is its length (`u64`) and then
//!   its contents; structs and tuples are their fields in order; an enum is
//!   its variant index (`u32`) and then its fields; `Option` is a tag byte;
//!   `bool` is one byte, 0 or 1; `char` is its `u32`;
//! - **runs of plain numbers move in bulk.** serde hands a `Vec<T>` or
//!   `[T]` to a format one element at a time (a 64 MiB `Vec<u8>` is 67
//!   million `serialize_u8` calls, which is what made postcard run at 0.3
//!   GiB/s). When the sequence being written is a slice of a plain number
//!   type, the serializer copies the slice's bytes at once; when the value
//!   being read is a `Vec` of one, the deserializer copies the bytes into a
//!   vector of the exact length. Elements written one by one (an `ndarray`
//!   array, a `VecDeque`) have the same bytes, so either side may take the
//!   fast path without the other.
//!
//! Knowing that a sequence is a slice of `f64` takes specialisation, which
//! Rust does not have: the fast paths compare type ids (with lifetimes
//! erased, by the `typeid` crate) of the iterator serde passes to
//! [`Serializer::collect_seq`], and of the visitor `Vec<T>`'s own
//! `Deserialize` impl passes to [`Deserializer::deserialize_seq`] (found
//! once by asking `Vec::<T>::deserialize` for it). Any other iterator or
//! visitor, a user's visitor whose value happens to be a `Vec<u8>` among
//! them, takes the ordinary element-by-element path, so no type's own serde
//! code is ever bypassed.
//!
//! Input is checked as it is read: a length larger than the bytes left, an
//! invalid `bool`, `char`, UTF-8 string or variant index, or a value cut
//! short, is an [`Error`] saying so, never a panic.

use std::any::TypeId;
use std::fmt;
use std::mem::{ManuallyDrop, size_of};
use std::sync::OnceLock;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

use crate::frame::RunBuf;

#[cfg(test)]
thread_local! {
    /// How many times a bulk path ran on this thread (tests check that the
    /// paths they mean to exercise are taken).
    static BULK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn note_bulk() {
    #[cfg(test)]
    BULK.set(BULK.get() + 1);
}

/// The element types whose slices and vectors move as raw bytes: every bit
/// pattern of their size is a valid value, and their wire form is their
/// little-endian memory.
#[cfg(target_pointer_width = "64")]
macro_rules! plain_types {
    ($m:ident) => {
        $m!(
            u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, f32, f64, usize, isize
        )
    };
}
/// (`usize` is written as a `u64`, so it is plain only where it has 8 bytes.)
#[cfg(not(target_pointer_width = "64"))]
macro_rules! plain_types {
    ($m:ident) => {
        $m!(u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, f32, f64)
    };
}
pub(crate) use plain_types;

/// Why a value did not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error(String);

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error(format!("the type's own Serialize impl failed: {msg}"))
    }
}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error(msg.to_string())
    }
}

/// Appends the encoding of `value` to `out`; on error `out` is left as it
/// was.
pub(crate) fn encode_into<V: Serialize + ?Sized>(
    value: &V,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    encode_noting_run(value, out, &mut None)
}

/// [`encode_into`], also noting in `run` the largest run of plain numbers
/// in `out` (this value's or the one `run` held before) that is big enough
/// to travel apart from its frame ([`RUN_MIN`] bytes or more; see
/// [`crate::frame`]). On error `out` and `run` are left as they were.
pub(crate) fn encode_noting_run<V: Serialize + ?Sized>(
    value: &V,
    out: &mut Vec<u8>,
    run: &mut Option<RunAt>,
) -> Result<(), Error> {
    let mark = out.len();
    let mut enc = Encoder { out, run: *run };
    let r = enc.value(value);
    match r {
        Ok(()) => *run = enc.run,
        Err(_) => out.truncate(mark),
    }
    r
}

/// Why [`Input::decode_tagged`] stopped before the count it was given.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// Before a byte other than the tag (or the end of the bytes allowed,
    /// or a run apart): nothing of it was read.
    Other,
    /// At a value that did not decode (read): why, and the bytes that were
    /// left before it.
    Failed(Error, usize),
    /// At a value that ended past the bytes allowed (read).
    Past,
}

/// Where a run of plain numbers lies in an encoding: `len` bytes at `at`,
/// made of `elem`-byte numbers, preceded by their count. A frame may carry
/// one such run apart from the rest ([`crate::frame`]), so that the reader
/// receives it straight into the memory of the `Vec` it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAt {
    pub(crate) at: usize,
    pub(crate) len: usize,
    pub(crate) elem: usize,
}

/// Smallest run worth an allocation of its own at the reader: the size of
/// a default pipe (below it, one copy out of the read buffer costs nothing
/// that matters).
pub(crate) const RUN_MIN: usize = 64 * 1024;

/// The plain number types: every bit pattern of their size is a valid
/// value, and their wire form is their little-endian memory.
///
/// # Safety
///
/// Implemented only by `plain_types!`, for which both are true.
pub(crate) unsafe trait Plain: Copy + 'static {}

macro_rules! impl_plain {
    ($($t:ty),*) => { $(
        // SAFETY: a number type of `plain_types!` (see `Plain`).
        unsafe impl Plain for $t {}
    )* };
}
const _: () = {
    plain_types!(impl_plain);
};

/// Decodes one value from the front of `input`, advancing it past the
/// value's bytes.
#[inline]
pub(crate) fn decode_from<'de, T: Deserialize<'de>>(input: &mut &'de [u8]) -> Result<T, Error> {
    let mut de = Decoder { input, apart: None };
    T::deserialize(&mut de)
}

/// Whether `S` is this format's serializer: a [`crate::Buffer`] travels
/// out of band only through it (any other format gets its numbers).
pub(crate) fn is_encoder<S: ?Sized>() -> bool {
    typeid::of::<S>() == typeid::of::<&mut Encoder<'_>>()
}

/// Whether `D` is this format's deserializer (see [`is_encoder`]).
pub(crate) fn is_decoder<D: ?Sized>() -> bool {
    typeid::of::<D>() == typeid::of::<&mut Decoder<'_, '_>>()
}

// ---------------------------------------------------------------------------
// Plain number types: the ones whose runs move in bulk.

/// Whether `T` is one of the plain number types.
#[inline]
fn is_plain<T: ?Sized>() -> bool {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($($t:ty),*) => { $(id == typeid::of::<$t>())||* };
    }
    plain_types!(check)
}

/// The size of `T` if it is a plain number type whose wire form is its
/// memory on this machine (little-endian): a value of it is then read in
/// place ([`read_plain`]), as its own `Deserialize` would read it.
#[inline]
fn plain_width<T>() -> Option<usize> {
    (cfg!(target_endian = "little") && is_plain::<T>()).then_some(size_of::<T>())
}

/// Fewest values worth looking for a plain type for (that compares type
/// ids, which costs more than decoding a handful of values).
const PLAIN_IN_PLACE_MIN: usize = 16;

/// If `T` is a plain number type ([`plain_width`]): reads up to `max`
/// values of it in place from `rest`, as many as it holds whole, passing
/// each to `each`, and returns how many (what is left, a value cut short
/// among it, is the general path's). Apart from that path, which then
/// stays as small as it is for a task of a few items.
#[inline(never)]
fn numbers_in_place<T>(rest: &mut &[u8], max: usize, each: &mut impl FnMut(T)) -> usize {
    let Some(w) = plain_width::<T>() else {
        return 0;
    };
    let whole = (rest.len() / w).min(max);
    for _ in 0..whole {
        // SAFETY: `T` is plain (`plain_width`), and `rest` holds at least
        // `w` bytes (`whole` of them were there).
        each(unsafe { read_plain::<T>(rest) });
        *rest = &rest[w..];
    }
    whole
}

/// As [`numbers_in_place`], each value after the byte `tag`, while the tag
/// is there and the value ends within the first `within` bytes of the
/// `all` bytes that `rest` ends (see [`Input::decode_tagged`]); anything
/// else is left to the general path, which reads it again and says why it
/// stopped.
#[inline(never)]
fn tagged_numbers_in_place<T>(
    all: usize,
    rest: &mut &[u8],
    tag: u8,
    max: usize,
    within: usize,
    each: &mut impl FnMut(T),
) -> usize {
    let Some(w) = plain_width::<T>() else {
        return 0;
    };
    let mut n = 0;
    while n < max {
        let used = all - rest.len();
        let bytes: &[u8] = rest;
        match bytes {
            [t, value @ ..] if *t == tag && value.len() >= w && used + 1 + w <= within => {
                // SAFETY: `T` is plain (`plain_width`), and `value` holds at
                // least `w` bytes.
                each(unsafe { read_plain::<T>(value) });
                *rest = &value[w..];
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// The value of `T` whose wire form starts `bytes`.
///
/// # Safety
///
/// [`plain_width::<T>()`](plain_width) is `Some(w)` and `bytes` holds at
/// least `w` bytes.
#[inline]
unsafe fn read_plain<T>(bytes: &[u8]) -> T {
    debug_assert!(plain_width::<T>().is_some_and(|w| bytes.len() >= w));
    // SAFETY: (the caller's promise) `T` is a plain number type, for which
    // every bit pattern of its size is a valid value, its wire form is its
    // little-endian memory and this machine is little-endian, and `bytes`
    // holds that many bytes; the read is unaligned.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The size of the plain number type whose slice iterator is `I`, if it is
/// one.
#[inline]
fn plain_slice_iter<I: ?Sized>() -> Option<usize> {
    let id = typeid::of::<I>();
    macro_rules! check {
        ($($t:ty),*) => {
            $(
                if id == typeid::of::<std::slice::Iter<'static, $t>>() {
                    return Some(size_of::<$t>());
                }
            )*
        };
    }
    plain_types!(check);
    None
}

/// For each plain number type `T`: the type id of the visitor that
/// `Vec::<T>::deserialize` passes to `deserialize_seq`, with `T`'s size.
fn vec_visitors() -> &'static [(TypeId, TypeId, usize)] {
    static IDS: OnceLock<Vec<(TypeId, TypeId, usize)>> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut ids = Vec::new();
        macro_rules! probe {
            ($($t:ty),*) => {
                $(
                    let mut found = None;
                    let _ = Vec::<$t>::deserialize(Probe(&mut found));
                    if let Some(visitor) = found {
                        ids.push((visitor, typeid::of::<Vec<$t>>(), size_of::<$t>()));
                    }
                )*
            };
        }
        plain_types!(probe);
        ids
    })
}

/// A deserializer that only records the type of the visitor it is given
/// for a sequence, and fails.
struct Probe<'a>(&'a mut Option<TypeId>);

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::new("probe"))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        *self.0 = Some(typeid::of::<V>());
        Err(Error::new("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

// ---------------------------------------------------------------------------
// Encoding.

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// The largest run of plain numbers written so far (see [`RunAt`]).
    run: Option<RunAt>,
}

impl Encoder<'_> {
    /// Encodes a value handed to the format (a field, an element, the
    /// whole value): an `ndarray` array of plain numbers with its elements
    /// in one block, anything else by its own `Serialize`.
    #[inline]
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        #[cfg(feature = "ndarray")]
        if let Some(r) = arrays::encode(value, self).or_else(|| arrays::encode_ref(value, self)) {
            return r;
        }
        value.serialize(self)
    }

    /// Notes the `len` bytes of `elem`-byte numbers just written at `at`
    /// as a run, if it is the largest so far and big enough.
    #[inline]
    fn note_run(&mut self, at: usize, len: usize, elem: usize) {
        if len >= RUN_MIN && self.run.is_none_or(|r| len > r.len) {
            self.run = Some(RunAt { at, len, elem });
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    #[inline]
    fn put_len(&mut self, len: usize) {
        self.put(&(len as u64).to_le_bytes());
    }
}

/// Reinterprets `items` as its bytes.
#[inline]
fn bytes_of<T: Copy>(items: &[T]) -> &[u8] {
    // SAFETY: only called with the plain number types (`plain_types!`),
    // which have no padding and no invalid bytes; the length is the slice's
    // size in bytes, and the borrow keeps the memory alive.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items)) }
}

macro_rules! put_number {
    ($($name:ident: $t:ty),*) => {
        $(
            #[inline]
            fn $name(self, v: $t) -> Result<(), Error> {
                self.put(&v.to_le_bytes());
                Ok(())
            }
        )*
    };
}

impl<'s, 'a> Serializer for &'s mut Encoder<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Counted<'a, 's>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Counted<'a, 's>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    put_number!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_f32: f32, serialize_f64: f64
    );

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(v as u8);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_u32(v as u32)
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.serialize_bytes(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.put_len(v.len());
        self.put(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(0);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.out.push(1);
        self.value(value)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), Error> {
        self.serialize_u32(index)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.value(value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.serialize_u32(index)?;
        self.value(value)
    }

    fn collect_seq<I>(self, iter: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let iter = iter.into_iter();
        if cfg!(target_endian = "little") && plain_slice_iter::<I::IntoIter>().is_some() {
            let iter = ManuallyDrop::new(iter);
            // SAFETY: `I::IntoIter` is `slice::Iter<'x, T>` for a plain
            // number type `T` and some lifetime `'x` (type ids equal up to
            // lifetimes); reading it as `slice::Iter<'_, u8>`'s sibling of
            // the same `T` is the identity. The borrow it holds outlives this
            // call, in which the bytes are used. `slice::Iter` has no drop
            // glue, so not dropping the original loses nothing.
            let bytes = unsafe { slice_iter_bytes(&*iter) };
            note_bulk();
            let size = plain_slice_iter::<I::IntoIter>().expect("checked");
            self.put_len(bytes.len() / size);
            let at = self.out.len();
            self.put(bytes);
            self.note_run(at, bytes.len(), size);
            return Ok(());
        }
        let mut seq = self.serialize_seq(iter_len(&iter))?;
        for item in iter {
            ser::SerializeSeq::serialize_element(&mut seq, &item)?;
        }
        ser::SerializeSeq::end(seq)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Counted<'a, 's>, Error> {
        Counted::start(self, len)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.serialize_u32(index)?;
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Counted<'a, 's>, Error> {
        Counted::start(self, len)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.serialize_u32(index)?;
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The exact length of an iterator, if its size hint states one.
fn iter_len<I: Iterator>(iter: &I) -> Option<usize> {
    match iter.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

/// The bytes of the rest of a slice iterator of a plain number type.
///
/// # Safety
///
/// `I` must be `std::slice::Iter<'_, T>` for one of the `plain_types!`.
unsafe fn slice_iter_bytes<I>(iter: &I) -> &[u8] {
    macro_rules! bytes {
        ($($t:ty),*) => {
            $(
                if typeid::of::<I>() == typeid::of::<std::slice::Iter<'static, $t>>() {
                    // SAFETY: the caller promises `I` is a slice iterator;
                    // its id says of which `T`. A `&I` is then a
                    // `&slice::Iter<'_, T>` borrowed for as long as `iter`.
                    let it = unsafe { &*(iter as *const I).cast::<std::slice::Iter<'_, $t>>() };
                    return bytes_of(it.as_slice());
                }
            )*
        };
    }
    plain_types!(bytes);
    unreachable!("slice_iter_bytes called with a type that is not a plain slice iterator")
}

/// A sequence or map being written: its length is written first, either
/// the one announced or, if none was, patched in at the end.
pub(crate) struct Counted<'a, 'b> {
    enc: &'b mut Encoder<'a>,
    /// Where the length goes, if it must be patched in.
    patch: Option<usize>,
    count: usize,
    /// Elements announced (for the first element's reservation).
    announced: usize,
    /// Where the elements start, and their size while every one so far was
    /// a plain number of that size (0 otherwise): such a sequence written
    /// element by element (an `ndarray` array) is a run too.
    first_at: usize,
    plain: usize,
}

impl<'a, 'b> Counted<'a, 'b> {
    fn start(enc: &'b mut Encoder<'a>, len: Option<usize>) -> Result<Self, Error> {
        let patch = match len {
            Some(n) => {
                enc.put_len(n);
                None
            }
            None => {
                let at = enc.out.len();
                enc.put_len(0);
                Some(at)
            }
        };
        let first_at = enc.out.len();
        Ok(Counted {
            enc,
            patch,
            count: 0,
            announced: len.unwrap_or(0),
            first_at,
            plain: 0,
        })
    }

    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let plain = if is_plain::<T>() {
            size_of_val(value)
        } else {
            0
        };
        if self.count == 0 {
            self.plain = plain;
            if self.announced > 1 && plain > 0 {
                // A plain element's encoding is its size: reserve the whole
                // run once instead of doubling through a big array.
                let guess = self.announced.saturating_mul(plain);
                self.enc.out.reserve(guess.min(1 << 30));
            }
        } else if plain != self.plain {
            self.plain = 0;
        }
        self.count += 1;
        self.enc.value(value)
    }

    fn finish(self) -> Result<(), Error> {
        if self.plain > 0 {
            let len = self.enc.out.len() - self.first_at;
            self.enc.note_run(self.first_at, len, self.plain);
        }
        match self.patch {
            Some(at) => {
                self.enc.out[at..at + 8].copy_from_slice(&(self.count as u64).to_le_bytes());
                Ok(())
            }
            None if self.count == self.announced => Ok(()),
            None => Err(Error::new(format!(
                "a sequence announced {} elements but gave {}",
                self.announced, self.count
            ))),
        }
    }
}

impl ser::SerializeSeq for Counted<'_, '_> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeMap for Counted<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.count += 1;
        key.serialize(&mut *self.enc)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.enc.value(value)
    }

    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

macro_rules! fields {
    ($($trait:ident :: $method:ident ($($name:ident: $nt:ty),*)),*) => {
        $(
            impl ser::$trait for &mut Encoder<'_> {
                type Ok = ();
                type Error = Error;

                #[inline]
                fn $method<T: Serialize + ?Sized>(&mut self, $(_: $nt,)* value: &T) -> Result<(), Error> {
                    self.value(value)
                }

                fn end(self) -> Result<(), Error> {
                    Ok(())
                }
            }
        )*
    };
}

fields!(
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(key: &'static str),
    SerializeStructVariant::serialize_field(key: &'static str)
);

// ---------------------------------------------------------------------------
// `ndarray` arrays.

/// `ndarray` arrays of plain numbers, encoded with their elements as one
/// block.
///
/// ndarray writes an array as the struct `Array` of its format version
/// (`u8`), its shape and its elements, the elements one `serialize_element`
/// at a time (`array_serde.rs`): 64 MiB of `u8` took 1.6-2.1 s there and
/// back, 30 times a `Vec<u8>`. Where the value handed to the format is an
/// owned array (`Array<P, D>`, or a reference to one as a whole value) of
/// a plain number type in standard layout, the same bytes are written
/// with the elements copied at once (a test compares them with ndarray's
/// own). Other arrays (views, other layouts) take ndarray's path. Only
/// types whose size is an array's are compared by type id, and the
/// comparisons fold away in optimised builds.
#[cfg(feature = "ndarray")]
mod arrays {
    use super::{Encoder, Error, Plain, Serialize, size_of};
    use ndarray::{Array, Dimension, Ix1, Ix2, Ix3, Ix4, Ix5, Ix6, IxDyn};

    /// ndarray's `ARRAY_FORMAT_VERSION`, the first field of its encoding.
    const FORMAT_VERSION: u8 = 1;

    macro_rules! by_dim {
        ($value:ident, $enc:ident, $size:expr, $each:ident) => {
            by_dim!(@ $value, $enc, $size, $each, Ix1, Ix2, Ix3, Ix4, Ix5, Ix6, IxDyn)
        };
        (@ $value:ident, $enc:ident, $size:expr, $each:ident, $($d:ty),*) => {
            $(
                if size_of_val($value) == $size(size_of::<Array<u8, $d>>()) {
                    if let Some(r) = $each::<T, $d>($value, $enc) {
                        return Some(r);
                    }
                }
            )*
        };
    }

    /// Encodes `value` if it is an owned array of plain numbers in
    /// standard layout.
    #[inline]
    pub(super) fn encode<T: ?Sized>(value: &T, enc: &mut Encoder<'_>) -> Option<Result<(), Error>> {
        by_dim!(value, enc, |n| n, owned);
        None
    }

    /// [`encode`] for a reference to such an array (a whole value handed
    /// by reference, as `pool.map(f, &arrays)` does, or an element of a
    /// sequence of arrays).
    #[inline]
    pub(super) fn encode_ref<T: ?Sized>(
        value: &T,
        enc: &mut Encoder<'_>,
    ) -> Option<Result<(), Error>> {
        by_dim!(value, enc, |_| size_of::<&u8>(), by_ref);
        None
    }

    #[inline]
    fn owned<T: ?Sized, D: Dimension + Serialize>(
        value: &T,
        enc: &mut Encoder<'_>,
    ) -> Option<Result<(), Error>> {
        macro_rules! each {
            ($($t:ty),*) => { $(
                if typeid::of::<T>() == typeid::of::<Array<$t, D>>() {
                    // SAFETY: `T` is `Array<$t, D>` (type ids equal; the
                    // type has no lifetimes to differ in).
                    let a = unsafe { &*(value as *const T).cast::<Array<$t, D>>() };
                    return bulk(a, enc);
                }
            )* };
        }
        plain_types!(each);
        None
    }

    #[inline]
    fn by_ref<T: ?Sized, D: Dimension + Serialize>(
        value: &T,
        enc: &mut Encoder<'_>,
    ) -> Option<Result<(), Error>> {
        macro_rules! each {
            ($($t:ty),*) => { $(
                if typeid::of::<T>() == typeid::of::<&Array<$t, D>>() {
                    // SAFETY: `T` is `&'x Array<$t, D>` for some lifetime
                    // `'x` (type ids equal up to lifetimes), which the
                    // borrow of `value` outlives.
                    let a = unsafe { *(value as *const T).cast::<&Array<$t, D>>() };
                    return bulk(a, enc);
                }
            )* };
        }
        plain_types!(each);
        None
    }

    /// ndarray's fields, the elements as one block; `None` unless the
    /// array is in standard layout.
    fn bulk<P: Plain + Serialize, D: Dimension + Serialize>(
        a: &Array<P, D>,
        enc: &mut Encoder<'_>,
    ) -> Option<Result<(), Error>> {
        let data = a.as_slice()?;
        enc.out.push(FORMAT_VERSION);
        Some(
            a.raw_dim()
                .serialize(&mut *enc)
                .and_then(|()| data.serialize(&mut *enc)),
        )
    }
}

// ---------------------------------------------------------------------------
// Decoding.

struct Decoder<'a, 'de> {
    input: &'a mut &'de [u8],
    /// A run held apart from `input`, which then ends where the run
    /// belongs (see [`Input`]).
    apart: Option<&'a mut Apart<'de>>,
}

/// A run of plain numbers held apart from the bytes being decoded, and
/// what follows it.
struct Apart<'de> {
    /// The run, until a `Vec` adopts it.
    run: Option<RunBuf>,
    /// The bytes after the run.
    tail: &'de [u8],
    /// The value read into the run's place other than as one `Vec` of its
    /// numbers: it must be decoded again from the bytes joined.
    missed: bool,
}

macro_rules! get_number {
    ($($name:ident: $t:ty => $visit:ident),*) => {
        $(
            #[inline]
            fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                let v = <$t>::from_le_bytes(self.array::<{ size_of::<$t>() }>(stringify!($t))?);
                visitor.$visit(v)
            }
        )*
    };
}

impl<'de> Decoder<'_, 'de> {
    /// Notes that the value reads past the bytes before a run held apart
    /// (so it must be decoded again with the run in place); the error says
    /// so if it escapes.
    #[cold]
    fn past_run(&mut self) -> Option<Error> {
        let apart = self.apart.as_mut()?;
        apart.run.as_ref()?;
        apart.missed = true;
        Some(Error::new(
            "internal: the value reads a run of numbers held apart piecewise (decoded again joined)",
        ))
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8], Error> {
        if self.input.len() < n {
            if let Some(e) = self.past_run() {
                return Err(e);
            }
            return Err(Error::new(format!(
                "the value is cut short: {what} needs {n} bytes, {} are left",
                self.input.len()
            )));
        }
        let (head, rest) = self.input.split_at(n);
        *self.input = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn len(&mut self, what: &str) -> Result<usize, Error> {
        let n = u64::from_le_bytes(self.array::<8>(what)?);
        usize::try_from(n)
            .map_err(|_| Error::new(format!("{what} length {n} does not fit in usize")))
    }

    /// A length of items of at least `min` bytes each, checked against the
    /// bytes left (a corrupt length must not reserve a terabyte).
    fn checked_len(&mut self, what: &str, min: usize) -> Result<usize, Error> {
        let n = self.len(what)?;
        self.check_fits(what, n, min)?;
        Ok(n)
    }

    /// Checks that `n` items of at least `min` bytes fit in the bytes left.
    fn check_fits(&mut self, what: &str, n: usize, min: usize) -> Result<(), Error> {
        if n.saturating_mul(min) > self.input.len() {
            if let Some(e) = self.past_run() {
                return Err(e);
            }
            return Err(Error::new(format!(
                "{what} of {n} items of {min} bytes cannot fit in the {} bytes left: the data is corrupt or cut short",
                self.input.len()
            )));
        }
        Ok(())
    }

    /// The length of a sequence or map whose elements' sizes are not known
    /// here. Elements may take no bytes (`()`), so a length above the bytes
    /// left is allowed, but only up to [`MAX_EMPTY_ELEMENTS`]: a corrupt
    /// length must not make the decoder loop for hours.
    fn seq_len(&mut self, what: &str) -> Result<usize, Error> {
        let n = self.len(what)?;
        if n > self.input.len() && n > MAX_EMPTY_ELEMENTS {
            if let Some(e) = self.past_run() {
                return Err(e);
            }
            return Err(Error::new(format!(
                "{what} of {n} elements cannot fit in the {} bytes left (only elements of no \
                 bytes could, and at most {MAX_EMPTY_ELEMENTS} of those are accepted): the data \
                 is corrupt or cut short",
                self.input.len()
            )));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let n = self.checked_len("a byte string", 1)?;
        self.take(n, "a byte string")
    }

    fn str(&mut self) -> Result<&'de str, Error> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|e| Error::new(format!("a string is not UTF-8: {e}")))
    }
}

/// Most elements a sequence may have beyond the bytes left to read them
/// from (elements of no bytes, such as `()`).
const MAX_EMPTY_ELEMENTS: usize = 1 << 24;

/// Decodes a `Vec` of a plain number type of `size` bytes per element in
/// one copy.
fn decode_plain_vec<'de, V: Visitor<'de>>(
    de: &mut Decoder<'_, 'de>,
    size: usize,
) -> Result<V::Value, Error> {
    let n = de.len("a sequence")?;
    if let Some(v) = adopt_run::<V>(de, n, size) {
        return Ok(v);
    }
    de.check_fits("a sequence", n, size)?;
    let bytes = de.take(n * size, "a sequence")?;
    note_bulk();
    macro_rules! build {
        ($($t:ty),*) => {
            $(
                if typeid::of::<V::Value>() == typeid::of::<Vec<$t>>() {
                    let mut v: Vec<$t> = Vec::with_capacity(n);
                    // SAFETY: `v` has room for `n` elements, i.e. `bytes.len()`
                    // bytes; every bit pattern is a valid `$t`, and the wire
                    // form is its little-endian memory (checked by the caller).
                    unsafe {
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
                        v.set_len(n);
                    }
                    let v = ManuallyDrop::new(v);
                    // SAFETY: `V::Value` is `Vec<$t>` (type ids equal; a
                    // `Vec` of a plain type has no lifetimes to differ in).
                    return Ok(unsafe { std::ptr::read((&*v as *const Vec<$t>).cast::<V::Value>()) });
                }
            )*
        };
    }
    plain_types!(build);
    unreachable!("decode_plain_vec called for a value that is not a Vec of a plain type")
}

/// Takes the run held apart as the `Vec` being decoded, if the decoder
/// stands where the run belongs and the run is exactly `n` numbers of
/// `size` bytes: the `Vec` then owns the memory the run was read into, with
/// no copy. The bytes after the run become the input.
fn adopt_run<'de, V: Visitor<'de>>(
    de: &mut Decoder<'_, 'de>,
    n: usize,
    size: usize,
) -> Option<V::Value> {
    if !de.input.is_empty() {
        return None;
    }
    let apart = de.apart.as_mut()?;
    let run = apart.run.as_ref()?;
    if apart.missed || run.elem() != size || Some(run.len()) != n.checked_mul(size) {
        return None;
    }
    macro_rules! adopt {
        ($($t:ty),*) => {
            $(
                if typeid::of::<V::Value>() == typeid::of::<Vec<$t>>() {
                    let run = apart.run.take().expect("checked above");
                    let v = match run.into_vec::<$t>() {
                        Ok(v) => v,
                        Err(run) => {
                            apart.run = Some(run);
                            return None;
                        }
                    };
                    *de.input = apart.tail;
                    note_bulk();
                    let v = ManuallyDrop::new(v);
                    // SAFETY: `V::Value` is `Vec<$t>` (type ids equal; a
                    // `Vec` of a plain type has no lifetimes to differ in).
                    return Some(unsafe { std::ptr::read((&*v as *const Vec<$t>).cast::<V::Value>()) });
                }
            )*
        };
    }
    plain_types!(adopt);
    None
}

/// Encoded values to decode one after another, with one run of plain
/// numbers perhaps held apart (a frame's run, see [`crate::frame`]): the
/// `Vec` the run encodes takes its memory as it is; a value that reads the
/// run's place any other way is decoded again from the bytes joined, so
/// every type decodes as it would from one buffer.
pub(crate) struct Input {
    /// The bytes, the run cut out.
    bytes: Vec<u8>,
    /// What is decoded so far.
    pos: usize,
    /// The run, and where in `bytes` it belongs.
    run: Option<(usize, RunBuf)>,
}

impl Input {
    /// Values encoded in `bytes[from..]`, with `run` (if any) belonging at
    /// its offset in `bytes` (at `from` or after).
    pub(crate) fn new(bytes: Vec<u8>, from: usize, run: Option<(usize, RunBuf)>) -> Self {
        let mut input = Input { bytes, pos: 0, run };
        match &input.run {
            // Not where a writer puts one (a corrupt frame): in place, so
            // that decoding reads the bytes as they were sent.
            Some((at, r)) if *at < from => {
                let shift = r.len();
                input.join();
                input.pos = from + shift;
            }
            _ => input.pos = from,
        }
        input
    }

    /// Bytes left to decode, the run's included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.pos + self.run.as_ref().map_or(0, |(_, r)| r.len())
    }

    /// Puts the run back in its place in the bytes.
    #[cold]
    fn join(&mut self) {
        if let Some((at, run)) = self.run.take() {
            let mut joined = Vec::with_capacity(self.bytes.len() - self.pos + run.len());
            joined.extend_from_slice(&self.bytes[self.pos..at]);
            joined.extend_from_slice(run.bytes());
            joined.extend_from_slice(&self.bytes[at..]);
            self.bytes = joined;
            self.pos = 0;
        }
    }

    /// The next byte (an outcome's tag).
    #[inline]
    pub(crate) fn byte(&mut self) -> Option<u8> {
        if self.run.as_ref().is_some_and(|(at, _)| *at == self.pos) {
            self.join();
        }
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// Decodes the next value.
    #[inline]
    pub(crate) fn decode<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        if self.run.is_none() {
            let mut rest = &self.bytes[self.pos..];
            let r = decode_from::<T>(&mut rest);
            self.pos = self.bytes.len() - rest.len();
            return r;
        }
        self.decode_around_run()
    }

    /// Decodes up to `max` values one after another, passing each to
    /// `each` (without a run apart, in one tight loop); returns how many,
    /// and, if one did not decode, why, with the bytes that were left
    /// before it.
    #[inline]
    pub(crate) fn decode_each<T: DeserializeOwned>(
        &mut self,
        max: usize,
        mut each: impl FnMut(T),
    ) -> (usize, Option<(Error, usize)>) {
        let mut n = 0;
        while n < max && self.run.is_some() {
            let left = self.len();
            match self.decode::<T>() {
                Ok(v) => each(v),
                Err(e) => return (n, Some((e, left))),
            }
            n += 1;
        }
        let mut rest = &self.bytes[self.pos..];
        if max - n >= PLAIN_IN_PLACE_MIN {
            n += numbers_in_place(&mut rest, max - n, &mut each);
        }
        let mut failed = None;
        while n < max {
            let left = rest.len();
            match decode_from::<T>(&mut rest) {
                Ok(v) => each(v),
                Err(e) => {
                    failed = Some((e, left));
                    break;
                }
            }
            n += 1;
        }
        self.pos = self.bytes.len() - rest.len();
        (n, failed)
    }

    /// Decodes values that each follow the byte `tag`, one after another,
    /// at most `max` of them, passing each to `each`, as long as each ends
    /// within the next `within` bytes: the common case of a payload of
    /// outcomes, read in one tight loop. Returns how many it passed, and
    /// why it stopped if that was before `max` (see [`Stopped`]). With a
    /// run still apart it reads nothing ([`Stopped::Other`]): the
    /// value-by-value path ([`byte`](Self::byte), [`decode`](Self::decode))
    /// puts the run in its place.
    #[inline]
    pub(crate) fn decode_tagged<T: DeserializeOwned>(
        &mut self,
        tag: u8,
        max: usize,
        within: usize,
        mut each: impl FnMut(T),
    ) -> (usize, Option<Stopped>) {
        if self.run.is_some() {
            return (0, (max > 0).then_some(Stopped::Other));
        }
        let all = &self.bytes[self.pos..];
        let within = within.min(all.len());
        let mut rest = all;
        let mut n = 0;
        if max >= PLAIN_IN_PLACE_MIN {
            n = tagged_numbers_in_place(all.len(), &mut rest, tag, max, within, &mut each);
        }
        let stopped = loop {
            if n == max {
                break None;
            }
            let value = match rest {
                [t, value @ ..] if *t == tag && all.len() - rest.len() < within => value,
                _ => break Some(Stopped::Other),
            };
            let mut input = value;
            let r = decode_from::<T>(&mut input);
            rest = input;
            if all.len() - rest.len() > within {
                break Some(Stopped::Past);
            }
            match r {
                Ok(v) => each(v),
                Err(e) => break Some(Stopped::Failed(e, value.len())),
            }
            n += 1;
        };
        self.pos = self.bytes.len() - rest.len();
        (n, stopped)
    }

    /// [`decode`](Self::decode) with a run still apart from the bytes.
    #[inline(never)]
    fn decode_around_run<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let Some((at, run)) = self.run.take() else {
            return self.decode();
        };
        let (head, tail) = self.bytes[self.pos..].split_at(at - self.pos);
        let mut apart = Apart {
            run: Some(run),
            tail,
            missed: false,
        };
        let mut input = head;
        let r = T::deserialize(&mut Decoder {
            input: &mut input,
            apart: Some(&mut apart),
        });
        let left = input.len();
        match apart.run {
            Some(run) if apart.missed => {
                // Read piecewise (or past its end, when corrupt): again,
                // from the bytes with the run in place.
                self.run = Some((at, run));
                self.join();
                self.decode()
            }
            Some(run) => {
                // The value ended before the run.
                self.pos = at - left;
                self.run = Some((at, run));
                r
            }
            None => {
                // Adopted: what is left is in the tail.
                self.pos = self.bytes.len() - left;
                r
            }
        }
    }
}

impl<'de> Deserializer<'de> for &mut Decoder<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::new(
            "the pool's wire format is not self-describing: a type that deserializes with `deserialize_any` \
             (an untagged or internally tagged enum, `serde_json::Value`, a flattened struct) cannot cross it",
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    get_number!(
        deserialize_i8: i8 => visit_i8, deserialize_i16: i16 => visit_i16,
        deserialize_i32: i32 => visit_i32, deserialize_i64: i64 => visit_i64,
        deserialize_i128: i128 => visit_i128, deserialize_u8: u8 => visit_u8,
        deserialize_u16: u16 => visit_u16, deserialize_u32: u32 => visit_u32,
        deserialize_u64: u64 => visit_u64, deserialize_u128: u128 => visit_u128,
        deserialize_f32: f32 => visit_f32, deserialize_f64: f64 => visit_f64
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.array::<1>("a bool")?[0] {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(Error::new(format!("invalid bool byte {b}"))),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let c = u32::from_le_bytes(self.array::<4>("a char")?);
        let c = char::from_u32(c).ok_or_else(|| Error::new(format!("invalid char {c:#x}")))?;
        visitor.visit_char(c)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.array::<1>("an Option")?[0] {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            b => Err(Error::new(format!("invalid Option tag {b}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if cfg!(target_endian = "little") {
            let id = typeid::of::<V>();
            let value = typeid::of::<V::Value>();
            if let Some(&(_, _, size)) = vec_visitors()
                .iter()
                .find(|(v, val, _)| *v == id && *val == value)
            {
                return decode_plain_vec::<V>(self, size);
            }
        }
        let len = self.seq_len("a sequence")?;
        visitor.visit_seq(Items {
            de: self,
            left: len,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items {
            de: self,
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.seq_len("a map")?;
        visitor.visit_map(Items {
            de: self,
            left: len,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u32(visitor)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The items of a sequence, tuple or map being read.
struct Items<'a, 'b, 'de> {
    de: &'a mut Decoder<'b, 'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, '_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = u32::from_le_bytes(self.array::<4>("an enum variant")?);
        let v = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use std::collections::{BTreeMap, VecDeque};
    use std::fmt::Debug;

    /// Runs of numbers are read in place; the same values one field deep
    /// (`(u64,)`, not plain) take the general path. Both must stop at the
    /// same place for the same reason.
    #[test]
    fn numbers_read_in_place_stop_where_the_general_path_does() {
        // Tagged: 40 results (9 bytes each), a failure's tag, then a value
        // cut short.
        let mut tagged = Vec::new();
        for v in 10..50u64 {
            tagged.push(0);
            tagged.extend_from_slice(&v.to_le_bytes());
        }
        tagged.extend_from_slice(&[1, 0, 9, 9, 9]);
        fn tagged_run<T: DeserializeOwned>(
            bytes: &[u8],
            from: usize,
            max: usize,
            within: usize,
        ) -> (Vec<T>, Option<Stopped>, usize) {
            let mut input = Input::new(bytes.to_vec(), from, None);
            let mut got = Vec::new();
            let (n, stopped) = input.decode_tagged::<T>(0, max, within, |v| got.push(v));
            assert_eq!(n, got.len());
            (got, stopped, input.len())
        }
        let cases = [
            (0, 100, usize::MAX),
            (0, 20, usize::MAX),
            (0, 100, 9 * 30 - 1),
            (0, 100, 9 * 30),
            (0, 100, 9 * 30 + 1),
            (360, 100, usize::MAX),
            (361, 100, usize::MAX),
            (9 * 30, 100, usize::MAX),
        ];
        for (from, max, within) in cases {
            let (plain, p_stop, p_left) = tagged_run::<u64>(&tagged, from, max, within);
            let (tuples, t_stop, t_left) = tagged_run::<(u64,)>(&tagged, from, max, within);
            let case = (from, max, within);
            assert_eq!(
                plain,
                tuples.iter().map(|t| t.0).collect::<Vec<_>>(),
                "{case:?}"
            );
            assert_eq!(format!("{p_stop:?}"), format!("{t_stop:?}"), "{case:?}");
            assert_eq!(p_left, t_left, "{case:?}");
        }
        let (got, stopped, _) = tagged_run::<u64>(&tagged, 0, 100, 9 * 30 - 1);
        assert_eq!((got.len(), got[28]), (29, 38));
        assert!(matches!(stopped, Some(Stopped::Past)), "{stopped:?}");
        let (got, stopped, _) = tagged_run::<u64>(&tagged, 0, 100, usize::MAX);
        assert_eq!(got.len(), 40);
        assert!(matches!(stopped, Some(Stopped::Other)), "{stopped:?}");
        let stopped = tagged_run::<u64>(&tagged, 361, 100, usize::MAX).1;
        assert!(
            matches!(stopped, Some(Stopped::Failed(_, 3))),
            "{stopped:?}"
        );
        // Untagged: 40 values and a half.
        let mut items = Vec::new();
        for v in 5..45u64 {
            items.extend_from_slice(&v.to_le_bytes());
        }
        items.extend_from_slice(&[1, 2, 3, 4]);
        fn each_run<T: DeserializeOwned>(bytes: &[u8], max: usize) -> (Vec<T>, String, usize) {
            let mut input = Input::new(bytes.to_vec(), 0, None);
            let mut got = Vec::new();
            let (n, failed) = input.decode_each::<T>(max, |v| got.push(v));
            assert_eq!(n, got.len());
            (got, format!("{failed:?}"), input.len())
        }
        for max in [0, 16, 20, 40, 41, 99] {
            let (plain, p_failed, p_left) = each_run::<u64>(&items, max);
            let (tuples, t_failed, t_left) = each_run::<(u64,)>(&items, max);
            assert_eq!(
                plain,
                tuples.iter().map(|t| t.0).collect::<Vec<_>>(),
                "{max}"
            );
            assert_eq!((p_failed, p_left), (t_failed, t_left), "{max}");
        }
        let (got, failed, _) = each_run::<u64>(&items, 99);
        assert_eq!((got.len(), got[39]), (40, 44));
        assert!(failed.contains("4))"), "{failed}");
    }

    fn enc<V: Serialize + ?Sized>(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(v, &mut out).unwrap();
        out
    }

    fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
        let mut input = bytes;
        let v = decode_from::<T>(&mut input)?;
        assert!(input.is_empty(), "{} bytes left over", input.len());
        Ok(v)
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
        let bytes = enc(v);
        assert_eq!(&dec::<T>(&bytes).unwrap(), v);
        // Every cut of the bytes is a clean error, never a panic.
        for cut in 0..bytes.len().min(64) {
            let mut input = &bytes[..cut];
            assert!(
                decode_from::<T>(&mut input).is_err(),
                "cut at {cut} decoded"
            );
        }
    }

    /// Vectors of `n` values of every plain type, bit patterns from `seed`.
    macro_rules! each_plain {
        ($n:expr, $($t:ty),*) => {
            $(
                let v: Vec<$t> = (0..$n).map(|i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as $t).collect();
                round_trip(&v);
                // The bulk path writes what element-by-element writing writes.
                let deque: VecDeque<$t> = v.iter().copied().collect();
                assert_eq!(enc(&deque), enc(&v), "{}", stringify!($t));
                assert_eq!(enc(&v[..]), enc(&v));
                assert_eq!(enc(&v).len(), 8 + $n * size_of::<$t>());
            )*
        };
    }

    #[test]
    fn vectors_of_every_plain_type_round_trip_at_every_length() {
        for n in [0usize, 1, 2, 3, 7, 8, 9, 1000, 4097] {
            each_plain!(
                n, u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize
            );
        }
        let floats: Vec<f64> = vec![
            0.0,
            -0.0,
            1.5,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            -1e-300,
        ];
        round_trip(&floats);
        let nan = dec::<Vec<f64>>(&enc(&vec![f64::NAN; 3])).unwrap();
        assert!(nan.iter().all(|x| x.is_nan()));
        let f32s: Vec<f32> = (0..1001).map(|i| i as f32 / 7.0).collect();
        round_trip(&f32s);
    }

    #[test]
    fn values_written_element_by_element_read_back_through_the_bulk_path() {
        let deque: VecDeque<f64> = (0..100).map(|i| i as f64 * 0.5).collect();
        let v: Vec<f64> = dec(&enc(&deque)).unwrap();
        assert_eq!(v, deque.iter().copied().collect::<Vec<_>>());
        // And the other way: bulk-written, read element by element.
        let d: VecDeque<u16> = dec(&enc(&vec![1u16, 2, 3])).unwrap();
        assert_eq!(d, [1, 2, 3]);
    }

    #[test]
    fn nested_and_composite_values_round_trip() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Sample {
            name: String,
            data: Vec<f64>,
            bytes: Vec<u8>,
            rows: Vec<Vec<i32>>,
            flag: bool,
            c: char,
            maybe: Option<Box<Sample>>,
            unit: (),
            e: Vec<Shape>,
            map: BTreeMap<String, u32>,
            tuple: (u8, i64, Vec<u128>),
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum Shape {
            Dot,
            Circle(f64),
            Rect { w: u32, h: u32 },
            Pair(i8, i8),
        }
        let inner = Sample {
            name: "inner ünïcode".into(),
            data: vec![],
            bytes: vec![255, 0, 7],
            rows: vec![vec![], vec![1, -2, 3]],
            flag: false,
            c: '€',
            maybe: None,
            unit: (),
            e: vec![Shape::Dot],
            map: BTreeMap::new(),
            tuple: (1, -1, vec![u128::MAX]),
        };
        let s = Sample {
            name: String::new(),
            data: (0..333).map(|i| i as f64 / 3.0).collect(),
            bytes: (0..=255).collect(),
            rows: vec![vec![5; 17]; 3],
            flag: true,
            c: 'x',
            maybe: Some(Box::new(inner)),
            unit: (),
            e: vec![
                Shape::Circle(2.5),
                Shape::Rect { w: 3, h: 4 },
                Shape::Pair(-1, 1),
                Shape::Dot,
            ],
            map: [("a".to_string(), 1), ("bb".to_string(), 2)]
                .into_iter()
                .collect(),
            tuple: (9, i64::MIN, vec![0, 1, 2]),
        };
        round_trip(&s);
        round_trip(&Some(vec![1u8]));
        round_trip(&(Vec::<u8>::new(), String::new(), Vec::<()>::new()));
    }

    #[test]
    fn ndarray_arrays_round_trip() {
        let a = ndarray::Array2::<f64>::from_shape_fn((37, 5), |(i, j)| i as f64 * 10.0 + j as f64);
        round_trip(&a);
        let t = a.t().to_owned(); // column-major memory, written element by element
        round_trip(&t);
        let b = ndarray::Array3::<u8>::from_shape_fn((3, 0, 4), |_| 1);
        round_trip(&b);
        let c = ndarray::Array1::<i32>::from_vec((0..1001).collect());
        round_trip(&c);
    }

    #[test]
    fn a_custom_visitor_producing_a_vec_is_not_bypassed() {
        // A type whose own Deserialize reads a sequence of u8 through its own
        // visitor, reversing it: the bulk path must not take its place.
        #[derive(Debug, PartialEq)]
        struct Reversed(Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Reversed {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Vec<u8>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_seq<A: de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Vec<u8>, A::Error> {
                        let mut v = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            v.insert(0, b);
                        }
                        Ok(v)
                    }
                }
                d.deserialize_seq(V).map(Reversed)
            }
        }
        assert_eq!(
            dec::<Reversed>(&enc(&vec![1u8, 2, 3])).unwrap(),
            Reversed(vec![3, 2, 1])
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic_or_a_huge_allocation() {
        // A length claiming far more than the input holds.
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let e = dec::<Vec<f64>>(&bytes).unwrap_err();
        assert!(e.to_string().contains("cannot fit"), "{e}");
        assert!(dec::<String>(&bytes).is_err());
        assert!(dec::<Vec<String>>(&bytes).is_err());
        assert!(
            dec::<bool>(&[2])
                .unwrap_err()
                .to_string()
                .contains("invalid bool")
        );
        // Elements of no bytes: a sane count decodes, a corrupt one is an
        // error at once instead of a loop of 2^63 steps.
        assert_eq!(dec::<Vec<()>>(&1000u64.to_le_bytes()).unwrap().len(), 1000);
        let e = dec::<Vec<()>>(&(1u64 << 63).to_le_bytes()).unwrap_err();
        assert!(e.to_string().contains("cannot fit"), "{e}");
        assert!(dec::<BTreeMap<(), ()>>(&u64::MAX.to_le_bytes()).is_err());
        assert!(dec::<char>(&0xD800u32.to_le_bytes()).is_err());
        assert!(dec::<Option<u8>>(&[9, 0]).is_err());
        let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert!(
            dec::<String>(&bad_utf8)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Two {
            A,
            B,
        }
        assert!(dec::<Two>(&7u32.to_le_bytes()).is_err());
        // Pseudo-random bytes into a few shapes: errors or values, no panic.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..200 {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut i = &noise[..];
            let _ = decode_from::<(Vec<u8>, String, Option<Vec<f64>>)>(&mut i);
            let mut i = &noise[..];
            let _ = decode_from::<BTreeMap<u8, Vec<u16>>>(&mut i);
        }
    }

    #[test]
    fn types_that_need_a_self_describing_format_say_so() {
        let e = dec::<serde::de::IgnoredAny>(&[0]).unwrap_err();
        assert!(e.to_string().contains("not self-describing"), "{e}");
    }

    #[test]
    fn a_sequence_of_unknown_length_gets_its_length_patched_in() {
        struct Odd;
        impl Serialize for Odd {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0..5u32).filter(|i| i % 2 == 1))
            }
        }
        assert_eq!(dec::<Vec<u32>>(&enc(&Odd)).unwrap(), [1, 3]);
    }

    #[test]
    fn a_serialize_error_keeps_its_message_and_leaves_the_buffer_as_it_was() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no, thanks"))
            }
        }
        let mut out = vec![1, 2, 3];
        let e = encode_into(&(7u64, Fails), &mut out).unwrap_err();
        assert!(e.to_string().contains("no, thanks"), "{e}");
        assert_eq!(out, [1, 2, 3]);
    }
}

#[cfg(test)]
mod runs {
    use super::*;
    use std::collections::VecDeque;

    /// `values` encoded one after another, the largest run cut out and held
    /// apart as a frame's reader holds it.
    fn apart<V: Serialize>(values: &[V]) -> (Input, Option<RunAt>) {
        let mut out = Vec::new();
        let mut run = None;
        for v in values {
            encode_noting_run(v, &mut out, &mut run).unwrap();
        }
        let input = match run {
            Some(r) => {
                let held = RunBuf::copy_of(&out[r.at..r.at + r.len], r.elem).unwrap();
                out.drain(r.at..r.at + r.len);
                Input::new(out, 0, Some((r.at, held)))
            }
            None => Input::new(out, 0, None),
        };
        (input, run)
    }

    #[test]
    fn the_largest_run_is_noted_with_its_place_and_element_size() {
        let small = vec![1u8; RUN_MIN - 1];
        let big = vec![2.5f64; RUN_MIN / 8 + 1];
        let bigger = vec![7u16; RUN_MIN];
        let mut out = vec![0; 5];
        let mut run = None;
        encode_noting_run(&small, &mut out, &mut run).unwrap();
        assert_eq!(run, None, "below RUN_MIN");
        encode_noting_run(&(1u8, &big), &mut out, &mut run).unwrap();
        let at = 5 + 8 + small.len() + 1 + 8;
        assert_eq!(
            run,
            Some(RunAt {
                at,
                len: big.len() * 8,
                elem: 8
            })
        );
        encode_noting_run(&bigger, &mut out, &mut run).unwrap();
        assert_eq!(run.unwrap().elem, 2);
        assert_eq!(run.unwrap().len, bigger.len() * 2);
        // Written element by element (an ndarray array): a run too.
        let mut out = Vec::new();
        let mut run = None;
        let a = ndarray::Array1::<i32>::from_elem(RUN_MIN, 3);
        encode_noting_run(&a, &mut out, &mut run).unwrap();
        let r = run.expect("the array's elements are a run");
        assert_eq!((r.len, r.elem), (RUN_MIN * 4, 4));
        assert_eq!(&out[r.at..r.at + 8], &[3, 0, 0, 0, 3, 0, 0, 0]);
        // A failed encode leaves the run as it was.
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        let mut run2 = run;
        assert!(encode_noting_run(&(vec![1u64; RUN_MIN], Fails), &mut out, &mut run2).is_err());
        assert_eq!(run2, run);
    }

    #[test]
    fn a_vec_held_apart_is_decoded_in_the_memory_it_was_read_into() {
        macro_rules! each {
            ($($t:ty),*) => { $(
                let v: Vec<$t> = (0..RUN_MIN + 3).map(|i| i as $t).collect();
                let (mut input, run) = apart(&[&v]);
                assert!(run.is_some(), "{}", stringify!($t));
                let held = input.run.as_ref().unwrap().1.bytes().as_ptr();
                let back: Vec<$t> = input.decode().unwrap();
                assert_eq!(back, v);
                assert_eq!(back.as_ptr().cast::<u8>(), held, "{} was copied", stringify!($t));
                assert_eq!(input.len(), 0);
            )* };
        }
        each!(
            u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64
        );
    }

    #[test]
    fn values_around_a_run_held_apart_decode_in_order() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Around {
            name: String,
            data: Vec<f64>,
            after: Vec<u32>,
            grid: ndarray::Array2<u16>,
        }
        let a = Around {
            name: "x".repeat(100),
            data: (0..20_000).map(|i| i as f64 * 0.5).collect(),
            after: vec![9; 100],
            grid: ndarray::Array2::from_shape_fn((10, 10), |(i, j)| (i * j) as u16),
        };
        // A tuple is its fields one after another: three values in a row.
        let (mut input, run) = apart(&[(7u64, &a, "tail".to_string())]);
        assert!(run.is_some());
        assert_eq!(input.decode::<u64>().unwrap(), 7);
        let ptr = input.run.as_ref().unwrap().1.bytes().as_ptr();
        let back: Around = input.decode().unwrap();
        assert_eq!(back, a);
        assert_eq!(back.data.as_ptr().cast::<u8>(), ptr);
        assert_eq!(input.decode::<String>().unwrap(), "tail");
        assert_eq!(input.len(), 0);
    }

    #[test]
    fn a_run_read_other_than_as_one_vec_is_decoded_joined() {
        // A VecDeque reads its elements one by one: the run is put back in
        // place and the value decodes as from one buffer.
        let v: Vec<u16> = (0..RUN_MIN as u16).collect();
        let (mut input, _) = apart(&[&v]);
        let d: VecDeque<u16> = input.decode().unwrap();
        assert!(d.iter().eq(v.iter()));
        assert_eq!(input.len(), 0);
        // A Vec of another element size than the run's (u8 read as u16 pairs
        // is a type mismatch; read as bytes instead): joined, same answer as
        // from one buffer.
        let v = vec![5u8; RUN_MIN * 2];
        let (mut input, _) = apart(&[&v]);
        let b: serde_bytes_like::Bytes = input.decode().unwrap();
        assert_eq!(b.0, v);
        // The tag byte of the next value never sits on a run; if a corrupt
        // frame puts one there, the run is joined rather than skipped.
        let (mut input, run) = apart(&[&vec![1u8; RUN_MIN]]);
        let at = run.unwrap().at;
        assert_eq!(input.decode::<u64>().unwrap(), RUN_MIN as u64);
        assert_eq!(at, 8);
        assert_eq!(input.byte(), Some(1));
        assert_eq!(input.len(), RUN_MIN - 1);
    }

    #[test]
    fn a_run_placed_before_the_payload_is_put_back_in_place() {
        let mut bytes = vec![1, 2, 3];
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&[4, 5]);
        let run = RunBuf::copy_of(&[9, 9], 1).unwrap();
        // The run belongs at byte 1, before the payload (byte 3 on).
        let mut input = Input::new(bytes, 3, Some((1, run)));
        assert_eq!(input.len(), 8 + 2);
        assert_eq!(input.decode::<u64>().unwrap(), 2);
        assert_eq!(
            (input.byte(), input.byte(), input.byte()),
            (Some(4), Some(5), None)
        );
    }

    /// A byte string type, as `serde_bytes::ByteBuf` (not a dependency).
    mod serde_bytes_like {
        pub(super) struct Bytes(pub(super) Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

#[cfg(test)]
mod fast_paths {
    use super::*;

    #[test]
    fn the_bulk_paths_recognise_every_plain_type() {
        let mut n = 0;
        macro_rules! count {
            ($($t:ty),*) => { $( let _ = stringify!($t); n += 1; )* };
        }
        plain_types!(count);
        // Vec<T>'s own visitor was found for each plain type...
        assert_eq!(vec_visitors().len(), n);
        // ...and slice iterators are recognised, with their element size.
        assert_eq!(plain_slice_iter::<std::slice::Iter<'_, f64>>(), Some(8));
        assert_eq!(plain_slice_iter::<std::slice::Iter<'_, u8>>(), Some(1));
        assert_eq!(plain_slice_iter::<std::slice::Iter<'_, bool>>(), None);
        assert_eq!(plain_slice_iter::<std::vec::IntoIter<u8>>(), None);
    }

    /// Bulk paths taken while encoding and then decoding `v`.
    fn bulk_runs<T: Serialize + serde::de::DeserializeOwned>(v: &T) -> usize {
        let before = BULK.get();
        let mut out = Vec::new();
        encode_into(v, &mut out).unwrap();
        let mut input = &out[..];
        decode_from::<T>(&mut input).unwrap();
        BULK.get() - before
    }

    /// Writes a value through its own `Serialize`, never the format's
    /// `ndarray` path (which only sees values handed to the format).
    struct Own<'a, T>(&'a T);

    impl<T: Serialize> Serialize for Own<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.serialize(s)
        }
    }

    /// Bulk paths taken while encoding `v`, and its bytes.
    fn encoded<T: Serialize + ?Sized>(v: &T) -> (usize, Vec<u8>) {
        let before = BULK.get();
        let mut out = Vec::new();
        encode_into(v, &mut out).unwrap();
        (BULK.get() - before, out)
    }

    #[test]
    fn ndarray_arrays_are_written_in_bulk_with_ndarrays_own_bytes() {
        use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn};
        macro_rules! same {
            ($a:expr) => {{
                let a = $a;
                let (bulk, bytes) = encoded(&a);
                let (own_bulk, own) = encoded(&Own(&a));
                assert_eq!(bytes, own, "{}", stringify!($a));
                // The elements in one block (an `IxDyn` shape is a slice:
                // one more, on both paths).
                let shape = own_bulk;
                assert_eq!(bulk, shape + 1, "{}", stringify!($a));
                // By reference, as a whole value.
                assert_eq!(encoded(&&a), (shape + 1, own.clone()));
                // Inside a struct, a Vec, an Option: handed to the format.
                assert_eq!(encoded(&(7u8, &a)).0, shape + 1);
                assert_eq!(encoded(&vec![a.clone(), a.clone()]).0, 2 * (shape + 1));
                assert_eq!(encoded(&Some(a.clone())).0, shape + 1);
                let back = dec::<_>(&bytes);
                assert_eq!(back.as_ref(), Ok(&a));
            }};
        }
        fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
            let mut i = b;
            decode_from(&mut i)
        }
        same!(Array1::<u8>::from_shape_fn(100_003, |i| i as u8));
        same!(Array2::<f64>::from_shape_fn((37, 5), |(i, j)| i as f64 - j as f64));
        same!(Array3::<i16>::from_shape_fn(
            (3, 4, 5),
            |(i, j, k)| (i * 100 + j * 10 + k) as i16
        ));
        same!(ArrayD::<u32>::from_shape_fn(IxDyn(&[2, 3, 4, 5]), |d| d[3] as u32));
        same!(Array2::<u128>::zeros((0, 3)));
        // Not in standard layout: ndarray's own path, same bytes.
        let t = Array2::<f64>::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f64);
        let t = t.reversed_axes();
        assert_eq!(encoded(&t), (0, encoded(&Own(&t)).1));
        // Views and other element types: ndarray's own path.
        let v = Array1::<u8>::zeros(10);
        assert_eq!(encoded(&v.view()).0, 0);
        assert_eq!(encoded(&Array1::from_elem(3, true)).0, 0);
    }

    #[test]
    fn vectors_of_plain_numbers_take_the_bulk_paths_both_ways() {
        assert_eq!(bulk_runs(&vec![1u8; 1000]), 2);
        assert_eq!(bulk_runs(&vec![1.5f64; 1000]), 2);
        assert_eq!(
            bulk_runs(&(7u32, vec![1i16; 3], vec![vec![0u64; 2]; 3])),
            2 + 6
        );
        let a = ndarray::Array2::<f64>::zeros((4, 4));
        assert_eq!(
            bulk_runs(&a),
            2,
            "an ndarray array, written and read in bulk"
        );
        // Not plain: element by element both ways.
        assert_eq!(bulk_runs(&vec![true; 10]), 0);
        assert_eq!(bulk_runs(&vec!['x'; 10]), 0);
        assert_eq!(
            bulk_runs(&std::collections::VecDeque::from(vec![1u8; 10])),
            0
        );
    }
}
