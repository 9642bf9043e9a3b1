//! Functions across ranks: addresses made position independent, and the
//! check that every rank runs the same binary.
//!
//! Under `fork` a function pointer is valid in the child at the same
//! address. MPI ranks are separate executions of one program, each placed
//! by ASLR at its own base address, so an address alone means nothing on
//! another rank. Within one executable, though, the *distance* between two
//! functions is fixed at link time. A function therefore travels as its
//! offset from [`anchor`], a function of this crate linked into the same
//! executable, and each rank adds its own anchor's address back.
//!
//! That holds only if every rank runs the same bytes: [`ImageId`] hashes
//! the executable (`/proc/self/exe`), and `Pool::world` refuses to start
//! when the ranks' ids differ. And only for code in the executable itself:
//! a function in a shared library sits at a distance from the anchor that
//! the loader chooses per process. [`FnOffset::of`] checks (with `dladdr`)
//! that the function lies in the anchor's object and refuses it otherwise.

use std::fmt;
use std::hash::Hasher;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The fixed point of the image that every offset is taken from. Never
/// inlined, so that it has an address; never called.
#[inline(never)]
fn anchor() {}

/// The address of [`anchor`] in this process.
fn anchor_address() -> usize {
    anchor as fn() as usize
}

/// A function's position in the executable: its distance from a fixed
/// function of this crate. The same on every rank that runs the same
/// binary, whatever address ASLR gave the image.
///
/// # Examples
///
/// ```
/// use forkpool_mpi::FnOffset;
///
/// fn double(x: u64) -> u64 {
///     2 * x
/// }
/// let off = FnOffset::of(double as fn(u64) -> u64 as usize).expect("in the executable");
/// // On another rank of the same binary, `off.address()` is where `double` is there.
/// assert_eq!(off.address(), double as fn(u64) -> u64 as usize);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FnOffset(i64);

impl FnOffset {
    /// The offset of the code at `address`.
    ///
    /// # Errors
    ///
    /// [`Error::NotInExecutable`] when `address` lies outside the object
    /// (executable or shared library) that holds this crate's code: its
    /// distance from the anchor would differ from rank to rank.
    pub fn of(address: usize) -> Result<FnOffset, Error> {
        let ours = object_base(anchor_address());
        let theirs = object_base(address);
        if ours.is_none() || ours != theirs {
            return Err(Error::NotInExecutable {
                address,
                object: theirs.map(|(_, name)| name),
            });
        }
        Ok(FnOffset(address.wrapping_sub(anchor_address()) as i64))
    }

    /// The address this offset names in the current process.
    pub fn address(self) -> usize {
        anchor_address().wrapping_add(self.0 as usize)
    }

    /// The raw distance from the anchor, in bytes (for messages).
    pub fn get(self) -> i64 {
        self.0
    }
}

/// The base address and file name of the loaded object (executable or
/// shared library) that contains `address`, from `dladdr`.
fn object_base(address: usize) -> Option<(usize, String)> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `dladdr` only reads the loader's tables for `address` (any
    // value is allowed: it is looked up, never dereferenced) and writes
    // `info`, a valid, zeroed `Dl_info`.
    let found = unsafe { libc::dladdr(address as *const libc::c_void, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: `dladdr` returned non-zero, so it filled `info`.
    let info = unsafe { info.assume_init() };
    let name = if info.dli_fname.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `dli_fname` is the loader's NUL-terminated
        // path of the object, which lives as long as the object is loaded
        // (the anchor's object, and the caller's function's, stay loaded).
        unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned()
    };
    Some((info.dli_fbase as usize, name))
}

/// Which binary a rank runs: the size and a 64-bit hash of its executable
/// file. Ranks whose ids differ cannot exchange functions.
///
/// # Examples
///
/// ```
/// let me = forkpool_mpi::ImageId::current()?;
/// assert_eq!(me, forkpool_mpi::ImageId::current()?);
/// println!("this binary: {me}");
/// # Ok::<(), forkpool_mpi::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageId {
    /// The executable's size in bytes.
    pub len: u64,
    /// A hash of its bytes.
    pub hash: u64,
}

impl ImageId {
    /// The id of the running executable (`/proc/self/exe`).
    ///
    /// # Errors
    ///
    /// [`Error::Image`] when the executable cannot be read.
    pub fn current() -> Result<ImageId, Error> {
        ImageId::of_file(Path::new("/proc/self/exe"))
    }

    /// The id of the executable file at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Image`] when the file cannot be read.
    pub fn of_file(path: &Path) -> Result<ImageId, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::Image {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(ImageId::of_bytes(&bytes))
    }

    /// The id of an executable whose contents are `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> ImageId {
        // `DefaultHasher::new()` has fixed keys: the same bytes give the
        // same hash in every process of one build, which is all that is
        // compared (a binary built by another Rust may hash differently,
        // and is another binary anyway).
        let mut h = std::hash::DefaultHasher::new();
        h.write(bytes);
        ImageId {
            len: bytes.len() as u64,
            hash: h.finish(),
        }
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x} ({} bytes)", self.hash, self.len)
    }
}

/// The ranks whose image differs from rank 0's, with their ids, or `None`
/// when every rank runs rank 0's binary. `ids[r]` is rank `r`'s id.
pub(crate) fn differing(ids: &[ImageId]) -> Option<Vec<(usize, ImageId)>> {
    let first = *ids.first()?;
    let odd: Vec<(usize, ImageId)> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id != first)
        .map(|(r, id)| (r, *id))
        .collect();
    (!odd.is_empty()).then_some(odd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(x: u32) -> u32 {
        3 * x
    }

    #[test]
    fn an_offset_names_the_same_function_back() {
        let f = triple as fn(u32) -> u32;
        let off = FnOffset::of(f as usize).unwrap();
        assert_eq!(off.address(), f as usize);
        // SAFETY: the address is `triple`'s, made back from its offset.
        let back = unsafe { std::mem::transmute::<usize, fn(u32) -> u32>(off.address()) };
        assert_eq!(back(7), 21);
    }

    #[test]
    fn offsets_do_not_depend_on_where_the_image_is_loaded() {
        // The offset is the distance to the anchor, not the address: two
        // functions' offsets differ by exactly the distance between them.
        let (a, b) = (triple as fn(u32) -> u32 as usize, anchor_address());
        let (oa, ob) = (FnOffset::of(a).unwrap(), FnOffset::of(b).unwrap());
        assert_eq!(ob.get(), 0);
        assert_eq!(oa.get() - ob.get(), a.wrapping_sub(b) as i64);
    }

    #[test]
    fn a_function_in_a_shared_library_is_refused() {
        // libc's `getpid` is in libc.so, loaded at its own address.
        let f = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        match FnOffset::of(f) {
            Err(Error::NotInExecutable { object, .. }) => {
                let object = object.expect("dladdr finds libc");
                assert!(object.contains("libc"), "{object}");
            }
            other => panic!("expected NotInExecutable, got {other:?}"),
        }
    }

    #[test]
    fn an_address_outside_any_object_is_refused() {
        assert!(matches!(
            FnOffset::of(8),
            Err(Error::NotInExecutable { object: None, .. })
        ));
    }

    #[test]
    fn the_image_id_is_stable_and_sees_one_byte_changed() {
        let me = ImageId::current().unwrap();
        assert_eq!(me, ImageId::current().unwrap());
        let mut bytes = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(ImageId::of_bytes(&bytes), me);
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let changed = ImageId::of_bytes(&bytes);
        assert_eq!(changed.len, me.len);
        assert_ne!(changed.hash, me.hash);
        bytes.push(0);
        assert_ne!(ImageId::of_bytes(&bytes).len, me.len);
    }

    #[test]
    fn an_unreadable_executable_is_a_clear_error() {
        let e = ImageId::of_file(Path::new("/nonexistent/binary")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/binary"), "{e}");
    }

    #[test]
    fn differing_names_the_odd_ranks() {
        let a = ImageId { len: 1, hash: 2 };
        let b = ImageId { len: 1, hash: 3 };
        assert_eq!(differing(&[a, a, a]), None);
        assert_eq!(differing(&[a, b, a, b]), Some(vec![(1, b), (3, b)]));
        assert_eq!(differing(&[]), None);
    }
}
