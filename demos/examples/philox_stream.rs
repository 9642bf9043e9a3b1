//! The random-fill demo's Philox4x32-10 stream as raw bytes on stdout, for
//! statistical test suites that read a generator from a pipe (dieharder's
//! `-g 200`, PractRand's `RNG_test stdin32`, TestU01 through a stdin
//! wrapper):
//!
//! ```text
//! cargo run --release -p demos --example philox_stream -- 42 32000 | dieharder -g 200 -d 0
//! ```
//!
//! Arguments: the master seed (default 42) and the doubles per row
//! (default 32 000, the demo's). The words come in the order the demo
//! consumes them: row 0's blocks `0, 1, ...` (two doubles each), then row
//! 1's, and so on, each block's four 32-bit words little-endian. So the
//! bits tested are exactly those the demo turns into doubles (each double
//! keeps the top 53 bits of one 64-bit half of a block), across row
//! boundaries, where independent streams meet. It writes until the reader
//! closes the pipe.

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args
        .next()
        .map_or(42, |a| a.parse().expect("a seed: an integer"));
    let cols: u64 = args
        .next()
        .map_or(32_000, |a| a.parse().expect("doubles per row: an integer"));
    let blocks_per_row = cols.div_ceil(2);
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    for row in 0u64.. {
        for block in 0..blocks_per_row {
            let counter = [
                block as u32,
                (block >> 32) as u32,
                row as u32,
                (row >> 32) as u32,
            ];
            let words = demos::philox::philox4x32_10(counter, key);
            let mut bytes = [0u8; 16];
            for (b, w) in bytes.chunks_exact_mut(4).zip(words) {
                b.copy_from_slice(&w.to_le_bytes());
            }
            if out.write_all(&bytes).is_err() {
                return; // the test suite has read what it needs
            }
        }
    }
}
