//! Node-shared arrays: one copy per node, in an MPI-3 shared window.
//!
//! The ranks of a node (those `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`
//! groups together) allocate one window with `MPI_Win_allocate_shared`:
//! the node's lowest rank gives the memory for the node's block of rows
//! and the others give none; `MPI_Win_shared_query` then gives every rank
//! of the node the address of that block in its own address space. The
//! rows are split over the nodes in contiguous blocks, in proportion to
//! each node's worker ranks: a node holds only its block.
//!
//! As in `forkpool-shm`, memory other processes write is never behind a
//! `&[T]` or `&mut [T]`: every element is read and written atomically
//! (relaxed; a plain load or store on x86-64 and aarch64), and rows are
//! copied in and out of ordinary buffers. What one rank wrote is seen by
//! another after a message between them (the task's result, the next
//! task), which orders their memory operations.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mpi::collective::SystemOperation;
use mpi::ffi;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::split_rows;

/// A plain number a [`NodeArray`] can hold: `u8`, `i32`, `u32`, `f32`,
/// `i64`, `u64`, `f64`. Every bit pattern is a value and each has an
/// atomic counterpart of its size. Sealed.
pub trait NodeElement: sealed::Atomic + Copy + Send + Sync + 'static {
    /// The type's name, for messages (`"f64"`).
    const NAME: &'static str;
}

mod sealed {
    /// Atomic access to one element in place.
    pub trait Atomic: Sized {
        /// Loads the element at `p`, relaxed.
        ///
        /// # Safety
        /// `p` is non-null, aligned, valid for reads, and only ever
        /// accessed atomically while the call runs.
        unsafe fn load(p: *const Self) -> Self;
        /// Stores `v` at `p`, relaxed.
        ///
        /// # Safety
        /// As [`load`](Self::load), and valid for writes.
        unsafe fn store(p: *mut Self, v: Self);
    }
}

macro_rules! element {
    ($t:ty, $atomic:ty, $to:expr, $from:expr) => {
        impl sealed::Atomic for $t {
            unsafe fn load(p: *const Self) -> Self {
                // SAFETY: by the caller's promise; the atomic type has the
                // size and alignment of `$t`.
                let a = unsafe { <$atomic>::from_ptr(p as *mut _) };
                $from(a.load(Ordering::Relaxed))
            }
            unsafe fn store(p: *mut Self, v: Self) {
                // SAFETY: as in `load`.
                let a = unsafe { <$atomic>::from_ptr(p as *mut _) };
                a.store($to(v), Ordering::Relaxed)
            }
        }
        impl NodeElement for $t {
            const NAME: &'static str = stringify!($t);
        }
    };
}

element!(u8, AtomicU8, |v| v, |v| v);
element!(i32, AtomicI32, |v| v, |v| v);
element!(u32, AtomicU32, |v| v, |v| v);
element!(i64, AtomicI64, |v| v, |v| v);
element!(u64, AtomicU64, |v| v, |v| v);
element!(f32, AtomicU32, f32::to_bits, f32::from_bits);
element!(f64, AtomicU64, f64::to_bits, f64::from_bits);

/// What rank 0 sends every rank to allocate an array together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AllocRequest {
    pub(crate) id: u64,
    pub(crate) elem: String,
    pub(crate) elem_size: usize,
    pub(crate) shape: Vec<usize>,
    /// Worker ranks per node: the rows are split in proportion.
    pub(crate) weights: Vec<usize>,
}

/// One node's block of an array, as this rank sees it.
pub(crate) struct Segment {
    id: u64,
    elem: String,
    shape: Vec<usize>,
    row_len: usize,
    /// The rows each node holds.
    blocks: Vec<Range<usize>>,
    /// This rank's node.
    node: usize,
    /// The first element of this node's block (dangling when empty).
    base: *mut u8,
    win: ffi::MPI_Win,
}

// SAFETY: `base` points into the shared window, which is only ever
// accessed atomically through it; the window handle is used by one thread
// at a time (the `Segment::free` caller owns the last reference).
unsafe impl Send for Segment {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for Segment {}

/// The arrays of this process, by id: tasks find theirs here.
static SEGMENTS: Mutex<BTreeMap<u64, Arc<Segment>>> = Mutex::new(BTreeMap::new());

fn segments() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<Segment>>> {
    SEGMENTS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Segment {
    /// Allocates this node's block with the node's other ranks (collective
    /// on `node_comm`), pre-faults this rank's share of it, and registers
    /// it.
    pub(crate) fn allocate(
        node_comm: &SimpleCommunicator,
        node: usize,
        request: &AllocRequest,
    ) -> Result<Arc<Segment>> {
        let row_len: usize = request.shape[1..].iter().product();
        let blocks = split_rows(request.shape[0], &request.weights);
        let rows = blocks.get(node).cloned().unwrap_or(0..0);
        let bytes = rows.len() * row_len * request.elem_size;
        let leader = node_comm.rank() == 0;
        let mut base: *mut u8 = std::ptr::null_mut();
        let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        // SAFETY: a collective call every rank of `node_comm` makes with
        // the same request; `base` and `win` are written by MPI; INFO_NULL
        // is a predefined handle.
        let rc = unsafe {
            ffi::MPI_Comm_set_errhandler(node_comm.as_raw(), ffi::RSMPI_ERRORS_RETURN);
            ffi::MPI_Win_allocate_shared(
                if leader { bytes as ffi::MPI_Aint } else { 0 },
                request.elem_size as i32,
                ffi::RSMPI_INFO_NULL,
                node_comm.as_raw(),
                (&mut base as *mut *mut u8).cast(),
                win.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(Error::Array(format!(
                "MPI_Win_allocate_shared of {bytes} bytes on node {node} failed (MPI error {rc})"
            )));
        }
        // SAFETY: MPI_Win_allocate_shared succeeded and wrote the window.
        let win = unsafe { win.assume_init() };
        let mut size: ffi::MPI_Aint = 0;
        let mut disp: i32 = 0;
        // SAFETY: `win` is a shared window; rank 0 of it (the leader) holds
        // the block; the outputs are valid for writes.
        unsafe {
            ffi::MPI_Win_shared_query(
                win,
                0,
                &mut size,
                &mut disp,
                (&mut base as *mut *mut u8).cast(),
            );
        }
        if bytes > 0 && (base.is_null() || (size as usize) < bytes) {
            return Err(Error::Array(format!(
                "the shared window of node {node} holds {size} bytes at {base:?}, not {bytes}"
            )));
        }
        if bytes > 0 && !(base as usize).is_multiple_of(request.elem_size.max(8)) {
            return Err(Error::Array(format!(
                "the shared window of node {node} is not aligned for {} ({base:?})",
                request.elem
            )));
        }
        // Populate the block in bulk, each rank of the node its share
        // (new pages are dearest one fault at a time).
        let (me, n) = (node_comm.rank() as usize, node_comm.size() as usize);
        if bytes > 0 {
            let page = 4096;
            let start = (bytes * me / n) / page * page;
            let end = if me + 1 == n {
                bytes
            } else {
                (bytes * (me + 1) / n) / page * page
            };
            if end > start {
                // SAFETY: `[start, end)` lies within the block of `bytes`
                // bytes at `base`; populating changes no data.
                unsafe { populate(base.add(start), end - start) };
            }
        }
        let segment = Arc::new(Segment {
            id: request.id,
            elem: request.elem.clone(),
            shape: request.shape.clone(),
            row_len,
            blocks,
            node,
            base: if bytes > 0 {
                base
            } else {
                NonNull::dangling().as_ptr()
            },
            win,
        });
        segments().insert(request.id, Arc::clone(&segment));
        Ok(segment)
    }

    /// Frees array `id` together with the node's other ranks (collective
    /// on `node_comm`). If any rank of the node still holds a handle to it
    /// (kept past the pool's end), the window is left allocated so the
    /// handle stays valid.
    pub(crate) fn free(node_comm: &SimpleCommunicator, id: u64) {
        let segment = segments().remove(&id);
        let held: u8 = match &segment {
            Some(s) => u8::from(Arc::strong_count(s) > 1),
            None => 1,
        };
        let mut any_held = 0u8;
        node_comm.all_reduce_into(&held, &mut any_held, SystemOperation::max());
        if any_held != 0 {
            // Leave the window: a handle still points into it.
            if let Some(s) = segment {
                std::mem::forget(s);
            }
            return;
        }
        let segment = segment.expect("held is 0 only with the segment");
        let mut segment = Arc::try_unwrap(segment)
            .unwrap_or_else(|_| unreachable!("the count was 1 under the registry's lock"));
        // SAFETY: a collective call every rank of the node makes; no handle
        // to the memory remains on any of them (checked just above).
        unsafe { ffi::MPI_Win_free(&mut segment.win) };
    }
}

/// Maps `len` bytes at `p` writable in one call (`MADV_POPULATE_WRITE`,
/// Linux 5.14+); on older kernels the pages come on first touch instead.
///
/// # Safety
///
/// `[p, p + len)` lies within one mapping.
unsafe fn populate(p: *mut u8, len: usize) {
    let page = 4096;
    let start = (p as usize) / page * page;
    let len = len + (p as usize - start);
    if let Some(ptr) = NonNull::new(start as *mut std::ffi::c_void) {
        // SAFETY: the range, rounded out to whole pages, lies within the
        // caller's mapping (mappings are whole pages); populating faults
        // pages in without changing their contents.
        let _ = unsafe {
            nix::sys::mman::madvise(ptr, len, nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE)
        };
    }
}

/// A 2-D (or more) array held once per node, its rows split over the
/// nodes; every rank of a node reads and writes that node's rows.
///
/// Made by [`Pool::node_array`](crate::Pool::node_array) on rank 0 (every
/// rank joins). It travels in tasks as its id: a task's argument may hold
/// it, and the worker rank gets its own handle to the same memory.
///
/// # Examples
///
/// ```no_run
/// use forkpool_mpi::{NodeArray, Pool};
///
/// /// On a worker rank: sets every element of `row` to this rank's pid.
/// fn mark((array, row): (NodeArray<f64>, usize)) -> u32 {
///     array.fill_row(row, f64::from(std::process::id()));
///     std::process::id()
/// }
///
/// fn main() -> Result<(), forkpool_mpi::Error> {
///     let Some(pool) = Pool::world()? else { return Ok(()) };
///     let array = pool.node_array::<f64>(&[100, 1000])?;
///     // Each row's task runs on a rank of the node that holds the row.
///     let tasks: Vec<_> = (0..100)
///         .map(|r| (array.node_of_row(r), (array.clone(), r)))
///         .collect();
///     for pid in pool.imap_on(mark, tasks, 1, false) {
///         pid?;
///     }
///     Ok(())
/// }
/// ```
pub struct NodeArray<T: NodeElement> {
    segment: Arc<Segment>,
    _t: PhantomData<T>,
}

impl<T: NodeElement> Clone for NodeArray<T> {
    fn clone(&self) -> Self {
        NodeArray {
            segment: Arc::clone(&self.segment),
            _t: PhantomData,
        }
    }
}

impl<T: NodeElement> std::fmt::Debug for NodeArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeArray")
            .field("id", &self.segment.id)
            .field("elem", &T::NAME)
            .field("shape", &self.segment.shape)
            .field("rows_here", &self.rows_here())
            .finish()
    }
}

impl<T: NodeElement> NodeArray<T> {
    pub(crate) fn from_segment(segment: Arc<Segment>) -> Self {
        assert_eq!(segment.elem, T::NAME, "a segment made for another type");
        NodeArray {
            segment,
            _t: PhantomData,
        }
    }

    /// The shape, rows first.
    pub fn shape(&self) -> &[usize] {
        &self.segment.shape
    }

    /// The number of rows (of the whole array, over all nodes).
    pub fn nrows(&self) -> usize {
        self.segment.shape[0]
    }

    /// The elements in a row.
    pub fn row_len(&self) -> usize {
        self.segment.row_len
    }

    /// The rows this rank's node holds.
    pub fn rows_here(&self) -> Range<usize> {
        self.segment.blocks[self.segment.node].clone()
    }

    /// The rows node `node` holds.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn rows_of_node(&self, node: usize) -> Range<usize> {
        self.segment.blocks[node].clone()
    }

    /// The number of nodes the rows are split over.
    pub fn nodes(&self) -> usize {
        self.segment.blocks.len()
    }

    /// The node that holds `row`.
    ///
    /// # Panics
    ///
    /// If `row` is out of bounds.
    pub fn node_of_row(&self, row: usize) -> usize {
        assert!(row < self.nrows(), "row {row} of {} rows", self.nrows());
        self.segment
            .blocks
            .iter()
            .position(|b| b.contains(&row))
            .expect("the blocks cover every row")
    }

    /// The address of element `col` of `row`, a row of this node.
    fn at(&self, row: usize, col: usize) -> *mut T {
        let here = self.rows_here();
        assert!(
            here.contains(&row),
            "row {row} is not on this node (node {} holds rows {here:?}): run the task on \
             node {} (Pool::imap_on with NodeArray::node_of_row)",
            self.segment.node,
            if row < self.nrows() {
                self.node_of_row(row).to_string()
            } else {
                "none: out of bounds".to_owned()
            },
        );
        assert!(col < self.row_len(), "column {col} of {}", self.row_len());
        let index = (row - here.start) * self.row_len() + col;
        // SAFETY: `row` is in this node's block and `col` in the row, so
        // the element lies within the block the window holds.
        unsafe { self.segment.base.cast::<T>().add(index) }
    }

    /// Element `col` of `row`.
    ///
    /// # Panics
    ///
    /// If `row` is not on this rank's node, or `col` is out of bounds.
    pub fn load(&self, row: usize, col: usize) -> T {
        let p = self.at(row, col);
        // SAFETY: `p` is an element of the window, aligned (checked at
        // allocation), accessed only atomically.
        unsafe { T::load(p) }
    }

    /// Sets element `col` of `row`.
    ///
    /// # Panics
    ///
    /// As [`load`](Self::load).
    pub fn store(&self, row: usize, col: usize, value: T) {
        let p = self.at(row, col);
        // SAFETY: as in `load`.
        unsafe { T::store(p, value) }
    }

    /// Sets every element of `row` to `value`.
    ///
    /// # Panics
    ///
    /// As [`load`](Self::load).
    pub fn fill_row(&self, row: usize, value: T) {
        if self.row_len() == 0 {
            return;
        }
        let p = self.at(row, 0);
        for i in 0..self.row_len() {
            // SAFETY: the row's elements follow `p` in the block.
            unsafe { T::store(p.add(i), value) };
        }
    }

    /// Copies `src` into `row`.
    ///
    /// # Panics
    ///
    /// As [`load`](Self::load), and if `src` is not one row long.
    pub fn write_row(&self, row: usize, src: &[T]) {
        assert_eq!(
            src.len(),
            self.row_len(),
            "a row has {} elements",
            self.row_len()
        );
        if src.is_empty() {
            return;
        }
        let p = self.at(row, 0);
        for (i, &v) in src.iter().enumerate() {
            // SAFETY: as in `fill_row`.
            unsafe { T::store(p.add(i), v) };
        }
    }

    /// Copies `row` into `dst`.
    ///
    /// # Panics
    ///
    /// As [`write_row`](Self::write_row).
    pub fn read_row(&self, row: usize, dst: &mut [T]) {
        assert_eq!(
            dst.len(),
            self.row_len(),
            "a row has {} elements",
            self.row_len()
        );
        if dst.is_empty() {
            return;
        }
        let p = self.at(row, 0);
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: as in `fill_row`.
            *d = unsafe { T::load(p.add(i)) };
        }
    }

    /// Maps the pages of `rows` (rows of this node) writable in this
    /// process in one call, before a loop writes them.
    ///
    /// # Panics
    ///
    /// If a row is not on this node.
    pub fn prefault_rows(&self, rows: Range<usize>) {
        if rows.is_empty() || self.row_len() == 0 {
            return;
        }
        let first = self.at(rows.start, 0);
        let _ = self.at(rows.end - 1, 0);
        // SAFETY: the rows lie within this node's block, one mapping.
        unsafe {
            populate(
                first.cast(),
                rows.len() * self.row_len() * std::mem::size_of::<T>(),
            )
        };
    }
}

impl<T: NodeElement> Serialize for NodeArray<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.segment.id, T::NAME).serialize(s)
    }
}

impl<'de, T: NodeElement> Deserialize<'de> for NodeArray<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (id, elem) = <(u64, String)>::deserialize(d)?;
        let segment = segments().get(&id).cloned().ok_or_else(|| {
            serde::de::Error::custom(format!(
                "no node-shared array {id} on this rank: arrays come from Pool::node_array"
            ))
        })?;
        if elem != T::NAME || segment.elem != T::NAME {
            return Err(serde::de::Error::custom(format!(
                "node-shared array {id} holds {}, not {}",
                segment.elem,
                T::NAME
            )));
        }
        Ok(NodeArray::from_segment(segment))
    }
}
