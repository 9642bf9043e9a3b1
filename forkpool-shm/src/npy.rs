//! The `.npy` header: what `np.load(path, mmap_mode='r+')` expects in front of
//! the data, written and read with `ndarray-npy`'s header module.
//!
//! Format (numpy's `numpy.lib.format`): the magic `\x93NUMPY`, a version
//! (1.0, 2.0 or 3.0), the header length, then a Python dict literal such as
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }` padded with
//! spaces and a newline so the data starts at a multiple of 64 bytes. We
//! write C-order arrays of the plain element types and read only those; every
//! other header is an error that says what is wrong.

use std::fs::File;
use std::io::{ErrorKind, Seek};
use std::path::Path;

use ndarray_npy::npy::header::{Header, Layout, ParseHeaderError, ReadHeaderError};
use py_literal::Value as PyValue;

use crate::element::{Element, descr_matches, normalize_descr, rust_name_of_descr};
use crate::error::ShmError;

/// What a `.npy` header says, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyHeader {
    pub(crate) descr: String,
    pub(crate) shape: Vec<usize>,
    /// Where the data starts: the length of the whole header.
    pub(crate) data_offset: u64,
}

/// The bytes of a header for a C-order array of `shape` with elements `descr`.
pub(crate) fn header_bytes(path: &Path, descr: &str, shape: &[usize]) -> Result<Vec<u8>, ShmError> {
    Header {
        type_descriptor: PyValue::String(descr.to_owned()),
        layout: Layout::Standard,
        shape: shape.to_vec(),
    }
    .to_bytes()
    .map_err(|e| ShmError::NpyHeader {
        path: path.to_owned(),
        reason: format!("could not format the header: {e}"),
    })
}

/// Reads and checks the header at the start of `file`, for elements `T`.
pub(crate) fn read_header<T: Element>(file: &File, path: &Path) -> Result<NpyHeader, ShmError> {
    let bad = |reason: String| ShmError::NpyHeader {
        path: path.to_owned(),
        reason,
    };
    let mut reader = file;
    reader.rewind().map_err(|source| ShmError::Io {
        path: path.to_owned(),
        op: "seek to the start of the file",
        cause: source,
    })?;
    let header = match Header::from_reader(&mut reader) {
        Ok(header) => header,
        Err(ReadHeaderError::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            return Err(bad(format!(
                "the file ends inside the header (it is {len} bytes): it is truncated"
            )));
        }
        Err(ReadHeaderError::Io(source)) => {
            return Err(ShmError::Io {
                path: path.to_owned(),
                op: "read the .npy header",
                cause: source,
            });
        }
        Err(ReadHeaderError::Parse(ParseHeaderError::MagicString)) => {
            return Err(bad(
                "it does not start with the .npy magic bytes \\x93NUMPY (for a raw file, as \
                 np.memmap writes, use open_file with the shape)"
                    .into(),
            ));
        }
        Err(ReadHeaderError::Parse(e)) => return Err(bad(format!("bad header: {e}"))),
    };
    let data_offset = reader.stream_position().map_err(|source| ShmError::Io {
        path: path.to_owned(),
        op: "find the end of the .npy header",
        cause: source,
    })?;
    let descr = match header.type_descriptor {
        PyValue::String(descr) => descr,
        other => {
            return Err(ShmError::DtypeMismatch {
                path: path.to_owned(),
                expected: format!("{} ({})", T::NAME, T::NPY_DESCR),
                found: format!("the structured dtype {other}"),
                hint: "; only plain numeric dtypes are supported".into(),
            });
        }
    };
    if !descr_matches::<T>(&descr) {
        let hint = match rust_name_of_descr(&descr) {
            Some(name) => format!("; open it as an array of {name}"),
            None if normalize_descr(&descr).is_none() => {
                "; it is big-endian: convert it in numpy with a.astype(a.dtype.newbyteorder('<'))"
                    .into()
            }
            None => "; only u8..u64, i8..i64, f32 and f64 are supported".into(),
        };
        return Err(ShmError::DtypeMismatch {
            path: path.to_owned(),
            expected: format!("{} ({})", T::NAME, T::NPY_DESCR),
            found: format!("'{descr}'"),
            hint,
        });
    }
    if header.layout == Layout::Fortran {
        return Err(bad(
            "the array is stored in Fortran (column-major) order; only C order is supported \
             (save np.ascontiguousarray(a) instead)"
                .into(),
        ));
    }
    Ok(NpyHeader {
        descr,
        shape: header.shape,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = tmp.reopen().unwrap();
        (tmp, file)
    }

    #[test]
    fn writes_what_it_reads() {
        let bytes = header_bytes(Path::new("x.npy"), "<f8", &[3, 4]).unwrap();
        assert_eq!(bytes.len() % 64, 0);
        assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
        let text = String::from_utf8_lossy(&bytes[10..]);
        assert!(text.contains("'descr': '<f8'"), "{text}");
        assert!(text.contains("'fortran_order': False"), "{text}");
        assert!(text.contains("'shape': (3, 4)"), "{text}");
        let (tmp, file) = file_with(&bytes);
        let header = read_header::<f64>(&file, tmp.path()).unwrap();
        assert_eq!(header.shape, [3, 4]);
        assert_eq!(header.data_offset, bytes.len() as u64);
    }

    fn error_of<T: Element>(bytes: &[u8]) -> String {
        let (tmp, file) = file_with(bytes);
        read_header::<T>(&file, tmp.path()).unwrap_err().to_string()
    }

    #[test]
    fn explains_bad_headers() {
        let good = header_bytes(Path::new("x.npy"), "<i4", &[2]).unwrap();
        let err = error_of::<i32>(&good[..20]);
        assert!(err.contains("truncated"), "{err}");
        let err = error_of::<i32>(b"hello world, not numpy at all");
        assert!(err.contains("magic"), "{err}");
        let err = error_of::<i32>(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i4'\n");
        assert!(err.contains("bad header"), "{err}");
        let err = error_of::<f64>(&good);
        assert!(
            err.contains("'<i4'") && err.contains("as an array of i32"),
            "{err}"
        );
        let big = header_bytes(Path::new("x.npy"), ">f8", &[2]).unwrap();
        let err = error_of::<f64>(&big);
        assert!(err.contains("big-endian"), "{err}");
        let mut fortran = header_bytes(Path::new("x"), "<f8", &[2, 2]).unwrap();
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let err = error_of::<f64>(&fortran);
        assert!(err.contains("Fortran"), "{err}");
        let err = error_of::<f64>(b"\x93NUMPY\x09\x00\x10\x00");
        assert!(err.contains("version"), "{err}");
    }
}
