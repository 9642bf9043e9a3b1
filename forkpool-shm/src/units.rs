//! Sizes in human units, for error messages and memory reports: the
//! `bytesize` crate's [`ByteSize`], which displays in binary units
//! (`"512 B"`, `"1.5 KiB"`, `"10.0 TiB"`) and honours width and alignment
//! (`{:>10}`), re-exported so that users need not depend on it.
//!
//! ```
//! use forkpool_shm::ByteSize;
//!
//! assert_eq!(ByteSize(512).to_string(), "512 B");
//! assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
//! assert_eq!(ByteSize(25_600_000_000).to_string(), "23.8 GiB");
//! assert_eq!(format!("{:>10}", ByteSize(1 << 30)), "   1.0 GiB");
//! assert_eq!(ByteSize(7).as_u64(), 7);
//! ```

pub use bytesize::ByteSize;
