//! Sizes in human units, for error messages and memory reports.

use std::fmt;

/// A number of bytes that displays in binary human units (`"10.0 TiB"`,
/// `"512 B"`).
///
/// # Examples
///
/// ```
/// use forkpool_shm::ByteSize;
///
/// assert_eq!(ByteSize(512).to_string(), "512 B");
/// assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
/// assert_eq!(ByteSize(10 << 40).to_string(), "10.0 TiB");
/// assert_eq!(format!("{:>10}", ByteSize(1 << 30)), "   1.0 GiB");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(forkpool_shm::ByteSize(7).bytes(), 7);
    /// ```
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        ByteSize(bytes)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let text = if self.0 < 1024 {
            format!("{} B", self.0)
        } else {
            let mut value = self.0 as f64 / 1024.0;
            let mut unit = 0;
            while value >= 1024.0 && unit + 1 < UNITS.len() {
                value /= 1024.0;
                unit += 1;
            }
            format!("{value:.1} {}", UNITS[unit])
        };
        f.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn formats_each_unit() {
        assert_eq!(ByteSize(0).to_string(), "0 B");
        assert_eq!(ByteSize(1023).to_string(), "1023 B");
        assert_eq!(ByteSize(1024).to_string(), "1.0 KiB");
        assert_eq!(ByteSize(25_600_000_000).to_string(), "23.8 GiB");
        assert_eq!(ByteSize(u64::MAX).to_string(), "16.0 EiB");
    }
}
