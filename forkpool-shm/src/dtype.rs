//! numpy dtype strings: which element type a `.npy` header's `descr` means.
//!
//! numpy writes `dtype.str` (`'<f8'`, `'|u1'`, `'>i4'`, `'|O'`), but
//! `np.load` accepts anything `np.dtype()` does, so a header may also say
//! `'<d'`, `'f8'`, `'=f8'` or `'float64'`. This module understands the forms
//! `np.dtype()` accepts for plain numbers (checked against numpy 2.4 on
//! x86-64 Linux by `tests/npy_differential.rs`), and names everything else as
//! numpy would, so an error can say what the file holds and what to do.

use crate::element::Element;

/// What a descriptor string means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// A type this crate supports, in numpy's canonical little-endian form
    /// (`"<f8"`, `"|u1"`): an [`Element::NPY_DESCR`].
    Supported(&'static str),
    /// A supported kind and size in big-endian byte order (`">f8"`).
    BigEndian {
        /// numpy's name for it (`">f8"`).
        numpy: String,
        /// The little-endian form to convert it to (`"<f8"`).
        little: &'static str,
    },
    /// A dtype numpy has but this crate does not hold (`"|O"`, `"<c16"`).
    Unsupported {
        /// numpy's canonical name for it (`"|O"`, `"<U3"`), as far as known.
        numpy: String,
        /// What it is, in words, and what to do instead.
        what: &'static str,
    },
    /// Not a dtype numpy knows.
    Unknown,
}

/// The element types, as (canonical descriptor, Rust name).
const SUPPORTED: [(&str, &str); 10] = [
    ("|u1", "u8"),
    ("<u2", "u16"),
    ("<u4", "u32"),
    ("<u8", "u64"),
    ("|i1", "i8"),
    ("<i2", "i16"),
    ("<i4", "i32"),
    ("<i8", "i64"),
    ("<f4", "f32"),
    ("<f8", "f64"),
];

/// numpy's type names (which take no byte-order prefix), with their kind
/// and size on 64-bit Linux.
const NAMES: [(&str, char, u32); 37] = [
    ("int8", 'i', 1),
    ("int16", 'i', 2),
    ("int32", 'i', 4),
    ("int64", 'i', 8),
    ("uint8", 'u', 1),
    ("uint16", 'u', 2),
    ("uint32", 'u', 4),
    ("uint64", 'u', 8),
    ("float16", 'f', 2),
    ("float32", 'f', 4),
    ("float64", 'f', 8),
    ("half", 'f', 2),
    ("single", 'f', 4),
    ("double", 'f', 8),
    ("float", 'f', 8),
    ("longdouble", 'f', 16),
    ("byte", 'i', 1),
    ("ubyte", 'u', 1),
    ("short", 'i', 2),
    ("ushort", 'u', 2),
    ("intc", 'i', 4),
    ("uintc", 'u', 4),
    ("int", 'i', 8),
    ("uint", 'u', 8),
    ("int_", 'i', 8),
    ("long", 'i', 8),
    ("ulong", 'u', 8),
    ("longlong", 'i', 8),
    ("ulonglong", 'u', 8),
    ("intp", 'i', 8),
    ("uintp", 'u', 8),
    ("bool", 'b', 1),
    ("bool_", 'b', 1),
    ("complex64", 'c', 8),
    ("complex128", 'c', 16),
    ("object", 'O', 8),
    ("complex", 'c', 16),
];

/// numpy's one-letter type codes, with their kind and size on 64-bit Linux.
const CODES: [(char, char, u32); 19] = [
    ('b', 'i', 1),
    ('B', 'u', 1),
    ('h', 'i', 2),
    ('H', 'u', 2),
    ('i', 'i', 4),
    ('I', 'u', 4),
    ('l', 'i', 8),
    ('L', 'u', 8),
    ('q', 'i', 8),
    ('Q', 'u', 8),
    ('p', 'i', 8),
    ('P', 'u', 8),
    ('e', 'f', 2),
    ('f', 'f', 4),
    ('d', 'f', 8),
    ('g', 'f', 16),
    ('?', 'b', 1),
    ('F', 'c', 8),
    ('D', 'c', 16),
];

/// The Rust element type holding numpy's canonical `descr`, if any.
pub(crate) fn rust_name(canonical: &str) -> Option<&'static str> {
    SUPPORTED
        .iter()
        .find(|(d, _)| *d == canonical)
        .map(|&(_, name)| name)
}

/// Whether `dtype` is `T`.
pub(crate) fn is<T: Element>(dtype: &Dtype) -> bool {
    matches!(dtype, Dtype::Supported(d) if *d == T::NPY_DESCR)
}

/// Parses the size after a kind letter as numpy does (C's `strtol`, whole
/// string): leading white space, an optional `+`, then decimal digits
/// (leading zeros allowed), nothing after them.
fn parse_size(text: &str) -> Option<u32> {
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What `descr` (the text of a `.npy` header's `'descr'` string) means.
pub(crate) fn parse(descr: &str) -> Dtype {
    if let Some(&(_, kind, size)) = NAMES.iter().find(|(name, ..)| *name == descr) {
        return classify('=', kind, size);
    }
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '=' | '|')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    // A leading repeat count or shape (`'2f8'`, `'(2,)f8'`) makes a
    // subarray dtype; numpy writes those as a tuple, never in a string.
    if descr
        .trim_start_matches(['<', '>', '=', '|'])
        .starts_with(|c: char| c.is_ascii_digit() || c == '(')
    {
        return unsupported(
            descr,
            "subarray dtypes are not supported; save an array of the base type, with the \
             extra axes in its shape",
        );
    }
    let mut chars = rest.chars();
    let Some(letter) = chars.next() else {
        return Dtype::Unknown;
    };
    let tail = chars.as_str();
    if tail.is_empty()
        && let Some(&(_, kind, size)) = CODES.iter().find(|(c, ..)| *c == letter)
    {
        return classify(order, kind, size);
    }
    match letter {
        'i' | 'u' | 'f' | 'b' | 'c' => match parse_size(tail) {
            Some(size) => classify(order, letter, size),
            None => Dtype::Unknown,
        },
        'O' => unsupported(
            "|O",
            "object arrays (Python objects) are not supported; save numeric data",
        ),
        'S' | 'a' => unsupported(
            &format!("|S{tail}"),
            "byte-string arrays are not supported; save numeric data (e.g. a.view(np.uint8))",
        ),
        'U' => unsupported(
            &format!("{}U{tail}", if order == '>' { '>' } else { '<' }),
            "unicode-string arrays are not supported; save numeric data",
        ),
        'V' => unsupported(
            &format!("|V{tail}"),
            "void (raw bytes) arrays are not supported; save numeric data (e.g. a.view(np.uint8))",
        ),
        'M' | 'm' => unsupported(
            &format!("{}{letter}{tail}", if order == '>' { '>' } else { '<' }),
            "datetime and timedelta arrays are not supported; save a.view(np.int64)",
        ),
        _ => Dtype::Unknown,
    }
}

fn unsupported(numpy: &str, what: &'static str) -> Dtype {
    Dtype::Unsupported {
        numpy: numpy.to_owned(),
        what,
    }
}

/// The meaning of kind `kind` (numpy's `dtype.kind`) of `size` bytes in byte
/// order `order`.
fn classify(order: char, kind: char, size: u32) -> Dtype {
    let big = order == '>' && size > 1;
    let mark = if size == 1 || kind == 'O' {
        '|'
    } else if big {
        '>'
    } else {
        '<'
    };
    let numpy = format!("{mark}{kind}{size}");
    let little = format!("{}{kind}{size}", if size == 1 { '|' } else { '<' });
    let known = SUPPORTED
        .iter()
        .find(|(d, _)| *d == little)
        .map(|&(d, _)| d);
    match (kind, size, known) {
        (_, _, Some(little)) if big => Dtype::BigEndian { numpy, little },
        (_, _, Some(canonical)) => Dtype::Supported(canonical),
        ('b', 1, _) => unsupported(
            "|b1",
            "boolean arrays are not supported; save a.astype(np.uint8) and open it as u8",
        ),
        ('f', 2, _) => unsupported(
            &numpy,
            "half-precision floats are not supported; save a.astype(np.float32)",
        ),
        ('f', 16, _) => unsupported(
            &numpy,
            "long-double floats are not supported; save a.astype(np.float64)",
        ),
        ('c', 8 | 16, _) => unsupported(
            &numpy,
            "complex arrays are not supported; save a.view(np.float32) or \
             a.view(np.float64) (real and imaginary parts interleaved)",
        ),
        ('O', _, _) => unsupported(
            "|O",
            "object arrays (Python objects) are not supported; save numeric data",
        ),
        _ => Dtype::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_itself<T: Element>() {
        assert_eq!(parse(T::NPY_DESCR), Dtype::Supported(T::NPY_DESCR));
        assert!(is::<T>(&parse(T::NPY_DESCR)));
        assert_eq!(rust_name(T::NPY_DESCR), Some(T::NAME));
    }

    #[test]
    fn every_element_type_is_its_own_descr() {
        names_itself::<u8>();
        names_itself::<u16>();
        names_itself::<u32>();
        names_itself::<u64>();
        names_itself::<i8>();
        names_itself::<i16>();
        names_itself::<i32>();
        names_itself::<i64>();
        names_itself::<f32>();
        names_itself::<f64>();
        assert!(!is::<f64>(&parse("<f4")));
    }

    #[test]
    fn synonyms_of_supported_types_are_that_type() {
        for descr in [
            "<f8", "f8", "=f8", "|f8", "<d", "d", "float64", "double", "float", "<f08", "f 8",
            "<f+8", "f\t8",
        ] {
            assert_eq!(parse(descr), Dtype::Supported("<f8"), "{descr}");
        }
        for descr in ["|u1", "u1", "<u1", ">u1", "B", "uint8", "ubyte"] {
            assert_eq!(parse(descr), Dtype::Supported("|u1"), "{descr}");
        }
        for descr in ["b", "i1", "int8", "byte", ">i1"] {
            assert_eq!(parse(descr), Dtype::Supported("|i1"), "{descr}");
        }
        for descr in ["<i8", "l", "q", "p", "int64", "int", "long", "intp", "int_"] {
            assert_eq!(parse(descr), Dtype::Supported("<i8"), "{descr}");
        }
        assert_eq!(parse("<f"), Dtype::Supported("<f4"));
        assert_eq!(parse("I"), Dtype::Supported("<u4"));
        assert_eq!(parse("H"), Dtype::Supported("<u2"));
    }

    #[test]
    fn big_endian_and_unsupported_types_are_named_as_numpy_names_them() {
        assert_eq!(
            parse(">d"),
            Dtype::BigEndian {
                numpy: ">f8".into(),
                little: "<f8"
            }
        );
        let numpy_of = |d: &str| match parse(d) {
            Dtype::Unsupported { numpy, .. } => numpy,
            other => panic!("{d}: {other:?}"),
        };
        for (descr, numpy) in [
            ("|O", "|O"),
            ("object", "|O"),
            ("|b1", "|b1"),
            ("?", "|b1"),
            ("bool", "|b1"),
            ("<c16", "<c16"),
            ("|S2", "|S2"),
            ("<U3", "<U3"),
            ("<f2", "<f2"),
            ("<M8[ns]", "<M8[ns]"),
            ("1u1", "1u1"),
            ("<2f8", "<2f8"),
            ("(2,)f8", "(2,)f8"),
        ] {
            assert_eq!(numpy_of(descr), numpy);
        }
    }

    #[test]
    fn what_numpy_does_not_know_is_unknown() {
        for descr in [
            "", "<", "u", "<float64", "|int8", "<f9", "i3", "u16", "F8", " <f8", "<f8 ", "<<f8",
            "True", "f-8", "f_8", "f8_",
        ] {
            assert_eq!(parse(descr), Dtype::Unknown, "{descr:?}");
        }
    }
}
