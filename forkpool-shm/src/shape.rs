//! Shapes: checked element counts and byte sizes, rows.
//!
//! Arrays are n-dimensional and row-major (C order, numpy's default). A *row*
//! is one index along the first axis: for shape `[10000, 320000]` there are
//! 10 000 rows of 320 000 elements. A one-dimensional array has rows of one
//! element; a zero-dimensional array (a scalar, shape `[]`) is one row of one
//! element.

use crate::error::ShmError;
use crate::header::MAX_NDIM;

/// A validated shape and the numbers derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) shape: Box<[usize]>,
    /// Number of elements.
    pub(crate) len: usize,
    /// Elements per row.
    pub(crate) row_len: usize,
    /// Number of rows.
    pub(crate) nrows: usize,
    /// Bytes of data.
    pub(crate) bytes: u64,
}

impl Layout {
    /// Checks `shape` for elements of `elem_size` bytes: at most `MAX_NDIM`
    /// dimensions, and a byte size that fits the address space.
    pub(crate) fn new(shape: &[usize], elem_size: usize) -> Result<Layout, ShmError> {
        let invalid = |reason: String| ShmError::InvalidShape {
            shape: shape.to_vec(),
            reason,
        };
        if shape.len() > MAX_NDIM {
            return Err(invalid(format!(
                "{} dimensions, at most {MAX_NDIM} are supported",
                shape.len()
            )));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid("the number of elements overflows usize".into()))?;
        let bytes = len
            .checked_mul(elem_size)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| invalid("the size in bytes does not fit the address space".into()))?;
        let row_len = shape.iter().skip(1).product::<usize>();
        let nrows = shape.first().copied().unwrap_or(1);
        Ok(Layout {
            shape: shape.into(),
            len,
            row_len,
            nrows,
            bytes: bytes as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_rows_and_sizes() {
        let l = Layout::new(&[10, 20, 3], 8).unwrap();
        assert_eq!((l.len, l.row_len, l.nrows, l.bytes), (600, 60, 10, 4800));
        let scalar = Layout::new(&[], 4).unwrap();
        assert_eq!((scalar.len, scalar.row_len, scalar.nrows), (1, 1, 1));
        let empty = Layout::new(&[0, 5], 8).unwrap();
        assert_eq!((empty.len, empty.row_len, empty.nrows), (0, 5, 0));
        let flat = Layout::new(&[7], 2).unwrap();
        assert_eq!((flat.row_len, flat.nrows), (1, 7));
    }

    #[test]
    fn rejects_overflow_and_too_many_dimensions() {
        let err = Layout::new(&[usize::MAX, 2], 1).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        let err = Layout::new(&[usize::MAX / 4], 8).unwrap_err();
        assert!(err.to_string().contains("address space"), "{err}");
        let err = Layout::new(&[1; 33], 8).unwrap_err();
        assert!(err.to_string().contains("33 dimensions"), "{err}");
    }
}
