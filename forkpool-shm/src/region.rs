//! The mapping behind an array: where its header and its data are.
//!
//! A `Region` owns the `MAP_SHARED` mapping (or two, for file-backed arrays)
//! and knows nothing of element types beyond their size; the typed arrays
//! wrap an `Arc<Region>`, so cloning a handle is a reference-count increment
//! and the mapping goes away when the last handle in this process is dropped.
//! Other processes keep their own mappings; the memory itself is freed when
//! the last mapping in any process is gone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use memmap2::{Mmap, MmapMut};
use nix::errno::Errno;

use crate::element::Element;
use crate::error::{ShmError, io_error};
use crate::header::{HEADER_SIZE, Header};
use crate::memfd;
use crate::prefault::{self, Access};
use crate::shape::Layout;
use crate::units::ByteSize;

/// Where an array's data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Backing {
    /// A memfd: RAM, gone with the last mapping.
    Anonymous,
    /// A file: raw (`data_offset` 0) or `.npy` (after the header).
    File { path: PathBuf, data_offset: u64 },
}

/// A mapping, writable or not.
enum Map {
    ReadWrite(MmapMut),
    /// `PROT_READ`: nothing may write through it (a write would be `SIGSEGV`).
    ReadOnly(Mmap),
    /// Under Miri, which cannot map a memfd: zeroed, page-aligned heap
    /// memory standing in for an anonymous array's mapping, so that the
    /// element access, views and slices over it are checked for undefined
    /// behaviour (`cargo +nightly miri test -p forkpool-shm --lib`).
    #[cfg(miri)]
    Heap(miri::Heap),
}

pub(crate) struct Region {
    /// The mapping holding the data (and, for anonymous arrays, the header).
    map: Map,
    /// For file-backed arrays: the separate anonymous header page.
    _header_map: Option<MmapMut>,
    header: NonNull<Header>,
    data: NonNull<u8>,
    layout: Layout,
    elem_size: usize,
    backing: Backing,
}

// SAFETY: a `Region` is a pair of shared mappings plus plain metadata. The
// mappings are `Send + Sync` (`MmapMut` is); the raw pointers point into them
// and stay valid as long as the `Region` lives. Every access to the pointed-to
// memory goes through atomics, the robust mutex, or an `unsafe` function whose
// contract excludes concurrent access, so sharing the pointers between threads
// adds nothing that sharing between processes does not already cover.
unsafe impl Send for Region {}
// SAFETY: see `Send` above.
unsafe impl Sync for Region {}

impl Map {
    fn is_empty(&self) -> bool {
        match self {
            Map::ReadWrite(m) => m.is_empty(),
            Map::ReadOnly(m) => m.is_empty(),
            #[cfg(miri)]
            Map::Heap(_) => false,
        }
    }
}

impl Region {
    /// A fresh anonymous region for `shape` of `T`: zero-filled, or its
    /// data written by `fill` as the pages are populated: `fill(p, len)`
    /// must write data bytes `[p, p + len)` (`p` aligned to the element
    /// size, `len` a multiple of it), and is called once for each piece of
    /// the data, on the populating threads, before the region exists for
    /// anyone else.
    pub(crate) fn anonymous<T: Element>(
        shape: &[usize],
        fill: Option<&(dyn Fn(NonNull<u8>, usize) + Sync)>,
        populate: bool,
    ) -> Result<Region, ShmError> {
        let (descr, type_name, elem_size) = (T::NPY_DESCR, T::NAME, size_of::<T>());
        let layout = Layout::new(shape, elem_size)?;
        let data_offset = page_size().max(HEADER_SIZE);
        let total = layout.bytes + data_offset as u64;
        #[cfg(not(miri))]
        let (map, base) = anonymous_map(
            type_name,
            shape,
            total,
            elem_size,
            data_offset,
            fill,
            populate,
        )?;
        #[cfg(miri)]
        let (map, base) = {
            let _ = (type_name, elem_size, populate);
            let (map, base) = miri::Heap::zeroed(total);
            if let Some(fill) = fill
                && layout.bytes > 0
            {
                // SAFETY: `data_offset < total`: inside the allocation.
                fill(unsafe { base.add(data_offset) }, layout.bytes as usize);
            }
            (map, base)
        };
        let header = base.cast::<Header>();
        // SAFETY: the mapping is at least `data_offset >= HEADER_SIZE` bytes,
        // page-aligned, zero-filled (fresh memfd), and not shared with any
        // other process yet (nobody forked since it was made).
        unsafe { Header::init(header.as_ptr(), descr, shape)? };
        // SAFETY: `data_offset <= total`, so the result stays inside the mapping
        // (one past the end at most, for an empty array).
        let data = unsafe { base.add(data_offset) };
        let region = Region {
            map,
            _header_map: None,
            header,
            data,
            layout,
            elem_size,
            backing: Backing::Anonymous,
        };
        debug_assert!(region.header().describes(descr, shape));
        Ok(region)
    }

    /// A region over `file`, whose data of `layout` starts at `data_offset`,
    /// mapped read-write if `writable`, else read-only (`file` may then be
    /// opened read-only). The caller has checked that the file is exactly
    /// long enough.
    ///
    /// # Safety
    ///
    /// The file must not be truncated, and must not be modified other than
    /// through this region's handles (and those of processes forked after
    /// this call), for as long as the region lives (see
    /// [`ArrayOptions::create_file`](crate::ArrayOptions::create_file)).
    pub(crate) unsafe fn file(
        file: &File,
        path: &Path,
        descr: &str,
        elem_size: usize,
        layout: Layout,
        data_offset: u64,
        writable: bool,
    ) -> Result<Region, ShmError> {
        if !data_offset.is_multiple_of(elem_size as u64) {
            return Err(ShmError::NpyHeader {
                path: path.to_owned(),
                reason: format!(
                    "the data starts at byte {data_offset}, which is not a multiple of the \
                     element size {elem_size}; re-save it with a current numpy"
                ),
            });
        }
        let map_err = io_error(path, "map the file");
        let map = if writable {
            // SAFETY: the caller promises the file is neither truncated nor
            // changed behind our back while mapped.
            let map = unsafe { MmapMut::map_mut(file) };
            Map::ReadWrite(map.map_err(map_err)?)
        } else {
            // SAFETY: as above.
            let map = unsafe { Mmap::map(file) };
            Map::ReadOnly(map.map_err(map_err)?)
        };
        let mut header_map = anonymous_header_page(path)?;
        let header = NonNull::new(header_map.as_mut_ptr())
            .expect("a mapping is never at address 0")
            .cast::<Header>();
        // SAFETY: a fresh, page-aligned, zero-filled memfd page of
        // `HEADER_SIZE` bytes that nobody else maps yet.
        unsafe { Header::init(header.as_ptr(), descr, &layout.shape)? };
        let base = match &map {
            Map::ReadWrite(m) => m.as_ptr(),
            Map::ReadOnly(m) => m.as_ptr(),
            #[cfg(miri)]
            Map::Heap(_) => unreachable!("file regions are never on the heap"),
        };
        let data = if map.is_empty() {
            NonNull::<u64>::dangling().cast::<u8>()
        } else {
            // A read-only mapping's pointer is only ever read through: every
            // write path checks `writable()` first.
            let base = NonNull::new(base.cast_mut()).expect("a mapping is never at address 0");
            // SAFETY: the caller checked the file holds `data_offset` bytes
            // before the data, so the offset is inside the mapping.
            unsafe { base.add(data_offset as usize) }
        };
        let region = Region {
            map,
            _header_map: Some(header_map),
            header,
            data,
            layout,
            elem_size,
            backing: Backing::File {
                path: path.to_owned(),
                data_offset,
            },
        };
        debug_assert!(region.header().describes(descr, &region.layout.shape));
        Ok(region)
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: `header` points to an initialised header inside a mapping
        // that lives as long as `self`. Every field that changes after
        // initialisation is an atomic or a pthread mutex in an `UnsafeCell`.
        unsafe { self.header.as_ref() }
    }

    #[inline]
    pub(crate) fn data(&self) -> NonNull<u8> {
        self.data
    }

    #[inline]
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Whether the data may be written (false for a `PROT_READ` mapping).
    #[inline]
    pub(crate) fn writable(&self) -> bool {
        match self.map {
            Map::ReadWrite(_) => true,
            Map::ReadOnly(_) => false,
            #[cfg(miri)]
            Map::Heap(_) => true,
        }
    }

    /// The error for a write to a read-only region.
    pub(crate) fn read_only_error(&self) -> ShmError {
        let path = match &self.backing {
            Backing::File { path, .. } => path.clone(),
            Backing::Anonymous => PathBuf::from("anonymous array"),
        };
        ShmError::ReadOnly { path }
    }

    /// Faults in the pages of data bytes `[start, end)`.
    ///
    /// For an anonymous region, pages wanted for writing are populated *for
    /// reading*: its pages all exist (creation populated them), and a read
    /// fault on a shared memfd mapping maps them writable (shmem needs no
    /// write notification) and maps up to 16 neighbours at once (the
    /// kernel's fault-around), where `MADV_POPULATE_WRITE` takes the fault
    /// path once per page. Measured here in a forked child, 512 MiB: 0.06-0.23
    /// s against 0.18-0.48 s, and the fill that follows takes no fault
    /// either way. (Where the kernel does track writes to shared memory,
    /// soft-dirty for instance, the first write to each page is then a
    /// minor fault: slower, never wrong.) File-backed regions keep
    /// `MADV_POPULATE_WRITE`, which marks the pages dirty as the writes will.
    pub(crate) fn prefault(
        &self,
        start: usize,
        end: usize,
        access: Access,
    ) -> Result<(), ShmError> {
        debug_assert!(start <= end && end as u64 <= self.layout.bytes);
        if access == Access::Write && !self.writable() {
            return Err(self.read_only_error());
        }
        if start == end {
            return Ok(());
        }
        let access = match self.backing {
            Backing::Anonymous => Access::Read,
            Backing::File { .. } => access,
        };
        // SAFETY: `[start, end)` lies inside the data, which lies inside the
        // mapping, alive for the duration of the call.
        let ptr = unsafe { self.data.add(start) };
        prefault::prefault(ptr, end - start, access, self.elem_size)
    }

    /// Writes dirty pages of a file-backed region to the file and waits.
    pub(crate) fn flush(&self, wait: bool) -> Result<(), ShmError> {
        let Backing::File { path, .. } = &self.backing else {
            return Ok(());
        };
        let Map::ReadWrite(map) = &self.map else {
            return Ok(()); // nothing written, nothing to write back
        };
        let result = if wait { map.flush() } else { map.flush_async() };
        result.map_err(io_error(path, "flush (msync) the mapping"))
    }
}

/// A new memfd of `total` bytes for an array of `shape`, mapped
/// `MAP_SHARED` and populated (its data written by `fill`, as for
/// [`Region::anonymous`]), after checking the machine can give it.
#[cfg(not(miri))]
fn anonymous_map(
    type_name: &str,
    shape: &[usize],
    total: u64,
    elem_size: usize,
    data_offset: usize,
    fill: Option<&(dyn Fn(NonNull<u8>, usize) + Sync)>,
    populate: bool,
) -> Result<(Map, NonNull<u8>), ShmError> {
    crate::memory::check_available(total)?;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let name = format!("forkpool-shm:{type_name}[{}]", dims.join("x"));
    let populate = populate || fill.is_some(); // a fill touches every page anyway
    let file = if populate {
        memfd::create(&name, total)?
    } else {
        memfd::create_reserved(&name, total)?
    };
    let memfd_path = PathBuf::from(format!("/memfd:{name}"));
    // SAFETY: the memfd is ours alone: nobody else has it, so nothing can
    // truncate it or change it behind the mapping's back.
    let mut map = unsafe { MmapMut::map_mut(&file) }
        .map_err(io_error(&memfd_path, "map the anonymous shared memory"))?;
    let base = NonNull::new(map.as_mut_ptr()).expect("a mapping is never at address 0");
    if populate {
        populate_new(&file, base, total, elem_size, data_offset, fill)?;
    }
    drop(file); // the mapping keeps the memory alive; no descriptor to leak
    Ok((Map::ReadWrite(map), base))
}

#[cfg(miri)]
mod miri {
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::ptr::NonNull;

    /// Zeroed heap memory, aligned to a page, freed on drop.
    pub(super) struct Heap {
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl Heap {
        pub(super) fn zeroed(total: u64) -> (super::Map, NonNull<u8>) {
            let size = usize::try_from(total).expect("a test array fits in memory");
            let layout = Layout::from_size_align(size, 4096).expect("a valid layout");
            // SAFETY: `size` is at least a header page, never zero.
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation");
            (super::Map::Heap(Heap { ptr, layout }), ptr)
        }
    }

    impl Drop for Heap {
        fn drop(&mut self) {
            // SAFETY: allocated by `zeroed` with this layout, freed once.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }
}

/// Gives the new memfd `file`, mapped at `base` for `len` bytes, all its
/// memory, allocated, zeroed and mapped into this process: populated in
/// bulk on several threads (`MADV_POPULATE_WRITE`); on kernels without it,
/// reserved with `fallocate`, then touched page by page on several threads.
/// A fill that follows touches no new page: it takes no fault. With `fill`,
/// the data (from `data_offset` on) is written as it is populated (see
/// [`Region::anonymous`]). Huge pages are asked for first
/// ([`prefault::advise_huge_pages`]).
fn populate_new(
    file: &File,
    base: NonNull<u8>,
    len: u64,
    elem_size: usize,
    data_offset: usize,
    fill: Option<&(dyn Fn(NonNull<u8>, usize) + Sync)>,
) -> Result<(), ShmError> {
    let bytes = usize::try_from(len).expect("a mapping of `len` bytes exists");
    let threads = prefault::populate_threads(bytes);
    prefault::advise_huge_pages(base, bytes);
    // Mapping bytes `[start, start + n)` to the part of them that is data.
    let base_addr = base.as_ptr() as usize; // a `NonNull` is not `Sync`
    let fill_bytes = fill.map(|fill| {
        move |start: usize, n: usize| {
            let (from, to) = (start.max(data_offset), start + n);
            if from < to {
                let at = NonNull::new((base_addr + from) as *mut u8).expect("inside the mapping");
                fill(at, to - from);
            }
        }
    });
    let fill_bytes = fill_bytes
        .as_ref()
        .map(|f| f as &(dyn Fn(usize, usize) + Sync));
    match prefault::populate(base, bytes, threads, fill_bytes) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            memfd::reserve_all(file, len)?;
            match fill_bytes {
                // Filling touches every data page; the header page was
                // touched by nothing, but it is written right after.
                Some(fill) => {
                    let _ = prefault::on_threads(bytes, threads, |start, n| {
                        fill(start, n);
                        Ok::<(), ()>(())
                    });
                }
                // SAFETY: `[base, base + len)` is the whole new mapping
                // (page-aligned, a multiple of the element size: the data
                // follows a whole page of header), which no other thread or
                // process can reach yet.
                None => unsafe { prefault::touch_in_parallel(base, bytes, elem_size, threads) },
            }
            Ok(())
        }
        Err(cause) => Err(ShmError::Reserve {
            size: ByteSize(len),
            what: "an anonymous shared array".into(),
            cause,
        }),
    }
}

/// A one-page anonymous mapping for a file-backed array's header.
fn anonymous_header_page(path: &Path) -> Result<MmapMut, ShmError> {
    let file = memfd::create_reserved("forkpool-shm:header", HEADER_SIZE as u64)?;
    // SAFETY: the memfd is ours alone (see `Region::anonymous`).
    unsafe { MmapMut::map_mut(&file) }.map_err(io_error(path, "map the array's header page"))
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as usize)
        .unwrap_or(4096)
}
