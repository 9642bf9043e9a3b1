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
    /// dimensions, and, as numpy and `ndarray` require, a product of the
    /// non-zero axis lengths whose size in bytes fits `isize` (so
    /// `(0, 2**32, 2**32)` of `f64` is refused, as `np.load` refuses it, even
    /// though it holds no element). Every number derived here is computed
    /// with overflow checks.
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
        let too_big = || {
            invalid(format!(
                "the array is too big: the product of its non-zero axis lengths times the \
                 element size ({elem_size} bytes) is more than {} bytes, the most an address \
                 space (and numpy) can hold",
                isize::MAX
            ))
        };
        // ndarray's and numpy's rule: zero-length axes aside, the byte size
        // fits `isize`. Every partial product below is then bounded by it.
        shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(elem_size.max(1), |acc, &d| acc.checked_mul(d))
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        let product = |dims: &[usize]| dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let len = product(shape).ok_or_else(too_big)?;
        let row_len = product(shape.get(1..).unwrap_or(&[])).ok_or_else(too_big)?;
        let bytes = len.checked_mul(elem_size).ok_or_else(too_big)?;
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
        assert!(err.to_string().contains("too big"), "{err}");
        let err = Layout::new(&[usize::MAX / 4], 8).unwrap_err();
        assert!(err.to_string().contains("too big"), "{err}");
        let err = Layout::new(&[1; 33], 8).unwrap_err();
        assert!(err.to_string().contains("33 dimensions"), "{err}");
    }

    /// `(0, 2**32, 2**32)` holds no element, but its strides overflow: numpy
    /// refuses it, and `ndarray` requires the product of the non-zero axis
    /// lengths to fit `isize` (the old code accepted it, then overflowed
    /// computing the row length).
    #[test]
    fn an_empty_shape_whose_other_axes_overflow_is_refused_as_numpy_refuses_it() {
        let err = Layout::new(&[0, 1 << 32, 1 << 32], 8).unwrap_err();
        assert!(err.to_string().contains("too big"), "{err}");
        // numpy's limits exactly: 2**32 * 268435455 * 8 < 2**63 is fine,
        // 2**32 * 268435456 * 8 = 2**63 is not.
        let l = Layout::new(&[0, 1 << 32, 268_435_455], 8).unwrap();
        assert_eq!((l.len, l.nrows, l.bytes), (0, 0, 0));
        assert!(Layout::new(&[0, 1 << 32, 268_435_456], 8).is_err());
        assert!(Layout::new(&[0, isize::MAX as usize], 1).is_ok());
        assert!(Layout::new(&[0, isize::MAX as usize + 1], 1).is_err());
    }
}
