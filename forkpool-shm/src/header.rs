//! The header page in front of every array's data.
//!
//! An anonymous array's memfd holds one header page, then the data, so the data
//! starts page-aligned (every element type's atomic alignment holds, and a
//! range of rows maps to whole pages for `madvise`). A file-backed array keeps
//! its file exactly as numpy expects (raw, or `.npy`), so its header page is a
//! separate one-page memfd, shared with processes forked after the array was
//! opened.
//!
//! The header holds:
//!
//! - a magic number, the element type and the shape, so a mapping can be
//!   recognised and checked;
//! - the robust mutex of a [`Locked`](crate::Locked) array;
//! - the row-claim table behind
//!   [`SharedArray::with_rows_mut`](crate::SharedArray::with_rows_mut), with its
//!   own robust mutex.
//!
//! Everything in it that changes after creation is an atomic or a
//! `pthread_mutex_t`, so `&Header` never claims that memory other processes
//! write is frozen.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::error::ShmError;
use crate::mutex::RobustMutex;

/// The most dimensions an array can have (numpy 2 allows 64; 32 is numpy 1's
/// limit and plenty).
pub(crate) const MAX_NDIM: usize = 32;

/// How many row claims an array holds at once.
pub(crate) const MAX_CLAIMS: usize = 64;

/// The size reserved for the header in front of an anonymous array's data.
pub(crate) const HEADER_SIZE: usize = 4096;

const MAGIC: [u8; 8] = *b"FKPSHM\0\x01";

/// One claim of rows `[start, end)` by process `pid` (0: slot free),
/// exclusive (1) or shared (0).
#[repr(C)]
pub(crate) struct ClaimSlot {
    pub(crate) start: AtomicU64,
    pub(crate) end: AtomicU64,
    pub(crate) start_time: AtomicU64,
    pub(crate) pid: AtomicI32,
    pub(crate) exclusive: AtomicU32,
}

/// The header page's layout.
#[repr(C)]
pub(crate) struct Header {
    magic: [u8; 8],
    dtype: [u8; 8],
    ndim: u64,
    shape: [u64; MAX_NDIM],
    /// The lock of a `Locked` array.
    pub(crate) data_lock: RobustMutex,
    /// Guards `claims`.
    pub(crate) claims_lock: RobustMutex,
    pub(crate) claims: [ClaimSlot; MAX_CLAIMS],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

impl Header {
    /// Writes a fresh header describing `shape` of elements `descr`.
    ///
    /// # Safety
    ///
    /// `this` must be valid for writes of `HEADER_SIZE` bytes, aligned to a page,
    /// and zero-filled (fresh memfd pages are), and no other thread or process
    /// may use it until this returns.
    pub(crate) unsafe fn init(
        this: *mut Header,
        descr: &str,
        shape: &[usize],
    ) -> Result<(), ShmError> {
        debug_assert!(shape.len() <= MAX_NDIM);
        let mut dtype = [0u8; 8];
        dtype[..descr.len()].copy_from_slice(descr.as_bytes());
        let mut dims = [0u64; MAX_NDIM];
        for (d, &s) in dims.iter_mut().zip(shape) {
            *d = s as u64;
        }
        // SAFETY: `this` is valid, aligned and unused, as the caller promises.
        // The plain fields are written once here, before anyone else can see
        // them, and only read afterwards. The claim slots are zero bytes
        // already, which is a valid value of each atomic (slot free).
        unsafe {
            (&raw mut (*this).magic).write(MAGIC);
            (&raw mut (*this).dtype).write(dtype);
            (&raw mut (*this).ndim).write(shape.len() as u64);
            (&raw mut (*this).shape).write(dims);
            RobustMutex::init(&raw mut (*this).data_lock)?;
            RobustMutex::init(&raw mut (*this).claims_lock)?;
        }
        Ok(())
    }

    /// Whether the header describes `shape` of elements `descr` (a sanity check
    /// of the mapping, used in debug builds).
    pub(crate) fn describes(&self, descr: &str, shape: &[usize]) -> bool {
        self.magic == MAGIC
            && self.dtype.starts_with(descr.as_bytes())
            && self.ndim == shape.len() as u64
            && self.shape.iter().zip(shape).all(|(&a, &b)| a == b as u64)
    }
}
