//! Philox4x32-10, the counter-based generator of the random-fill demo.
//!
//! Philox (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy
//! as 1, 2, 3", SC '11) turns a 128-bit *counter* and a 64-bit *key* into
//! 128 random bits with ten rounds of two 32 x 32 -> 64-bit multiplications
//! and some xors. Its output is a pure function of (key, counter): any
//! element of any stream can be computed directly, by any process, in any
//! order. Philox4x32-10 passes TestU01's BigCrush (the paper's table 2:
//! "Crush-resistant", no failures; over many streams too), and it is what
//! cuRAND (`curand_Philox4x32_10`), TensorFlow and JAX use for parallel
//! streams; numpy offers its 64-bit sibling, `numpy.random.Philox`.
//!
//! Here the key is the demo's 64-bit master seed, and the counter is
//! `(block, row)`: word 0-1 the block index within the row, word 2-3 the row
//! index. Block `b` of row `r` gives doubles `2b` and `2b + 1` of the row:
//! the low and the high 64 bits of its output, each turned into a double in
//! `[0, 1)` from its top 53 bits (what numpy's `random()` and rand's
//! `random::<f64>()` do).
//!
//! Why not ChaCha8, the previous generator: it was slower than numpy per
//! core. Side by side in one run of the comparison runner (`compare --only
//! rng`: 2000 rows of 32 000 doubles into one reused row, one thread, on a
//! 2-core machine loaded by other builds), in ns per double: this Philox
//! with AVX-512 8.75-9.98, numpy's PCG64 `random(out=row)` 12.1-15.0,
//! ChaCha8 (`rand_chacha`) 13.7-15.3; with the load lower, 3.52, 4.22 and
//! 3.90 (`benches/RESULTS.md`). Philox's blocks are independent, so
//! 16 of them vectorise with no shuffling between blocks; with each 32-bit
//! word kept in a 64-bit lane (see `blocks`), no shuffling within a block
//! either: medians of 3 alternating rounds, load 8-10, Philox 2.73 ns per
//! double (fastest run 2.45), numpy's PCG64 4.92 (4.24), ChaCha8 6.72
//! (5.78); the same Philox with its words narrowed and widened every round
//! 5.3-5.8 (fastest 3.8-5.4).
//!
//! The kernel is written once over 16 lanes and compiled three times: for
//! AVX-512, for AVX2, and for the baseline x86-64 (SSE2) or any other
//! target; the widest the CPU has is picked at run time. All three compute
//! the same integers and convert them exactly, so the numbers are the same
//! bit for bit on every machine (tested against the scalar reference and
//! Random123's known-answer vectors below).
//!
//! No crate was used: those on crates.io are scalar, one block at a time,
//! which is the part that had to change; the generator itself is the ten
//! lines of [`philox4x32_10`], checked against the authors' vectors.

/// Philox4x32's multipliers and key increments (the "Weyl" constants), from
/// the paper and Random123's `philox.h`.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Blocks computed side by side: four AVX-512 registers of 32-bit lanes per
/// counter word, enough independent work to hide the multiplies' latency.
const LANES: usize = 16;

/// Philox4x32-10 of one counter under one key: the scalar reference.
///
/// # Examples
///
/// Random123's first known-answer vector (counter and key all zero):
///
/// ```
/// let out = demos::philox::philox4x32_10([0; 4], [0; 2]);
/// assert_eq!(out, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        (c0, c1, c2, c3) = (
            (p1 >> 32) as u32 ^ c1 ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ c3 ^ k1,
            p0 as u32,
        );
    }
    [c0, c1, c2, c3]
}

/// The double in `[0, 1)` made from the top 53 bits of `x`:
/// `(x >> 11) as f64 * 2^-53`, exactly, computed with operations every
/// SIMD level has (the integer-to-double conversion of 64-bit lanes needs
/// AVX-512DQ). The 53 bits are split into 21 high and 32 low bits, each
/// placed in the mantissa of a power of two and the power subtracted; the
/// sum is exact because it fits in 53 bits.
#[inline(always)]
fn to_unit(x: u64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0; // 2^52, bits 0x4330...
    const TWO_84: f64 = 19_342_813_113_834_066_795_298_816.0; // 2^84, bits 0x4530...
    const UNIT: f64 = 1.0 / (1u64 << 53) as f64;
    let v = x >> 11;
    let high = f64::from_bits(TWO_84.to_bits() | (v >> 32)) - TWO_84;
    let low = f64::from_bits(TWO_52.to_bits() | (v & 0xFFFF_FFFF)) - TWO_52;
    (high + low) * UNIT
}

/// Doubles `2 * first ..` of stream `stream` under `key`: [`LANES`]
/// consecutive blocks, two doubles each, into `out`.
///
/// Each 32-bit word lives in the low half of a 64-bit lane, so the
/// multiplications are the CPU's 32 x 32 -> 64-bit lane multiply
/// (`pmuludq`, which reads only the low halves) with no shuffling of words
/// in and out of wide lanes: the high halves may hold garbage between
/// rounds (the xors carry it along), and every use masks it off: the
/// multiplies and the output both take the low 32 bits.
#[inline(always)]
fn blocks(key: [u32; 2], stream: u64, first: u64, out: &mut [f64; 2 * LANES]) {
    const LOW: u64 = 0xFFFF_FFFF;
    let mut c0 = [0u64; LANES];
    let mut c1 = [0u64; LANES];
    let mut c2 = [stream & LOW; LANES];
    let mut c3 = [stream >> 32; LANES];
    for lane in 0..LANES {
        let block = first.wrapping_add(lane as u64);
        c0[lane] = block & LOW;
        c1[lane] = block >> 32;
    }
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let (k0, k1) = (u64::from(k0), u64::from(k1));
        for lane in 0..LANES {
            let p0 = u64::from(M0) * (c0[lane] & LOW);
            let p1 = u64::from(M1) * (c2[lane] & LOW);
            c0[lane] = (p1 >> 32) ^ c1[lane] ^ k0;
            c2[lane] = (p0 >> 32) ^ c3[lane] ^ k1;
            c1[lane] = p1;
            c3[lane] = p0;
        }
    }
    for lane in 0..LANES {
        let low = (c0[lane] & LOW) | c1[lane] << 32;
        let high = (c2[lane] & LOW) | c3[lane] << 32;
        out[2 * lane] = to_unit(low);
        out[2 * lane + 1] = to_unit(high);
    }
}

/// The kernel, for whichever instruction set it is compiled with.
#[inline(always)]
fn fill_lanes(seed: u64, stream: u64, out: &mut [f64]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut first = 0u64;
    let mut chunks = out.chunks_exact_mut(2 * LANES);
    for chunk in &mut chunks {
        blocks(
            key,
            stream,
            first,
            chunk.try_into().expect("chunks of 2 * LANES"),
        );
        first += LANES as u64;
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut tail = [0.0; 2 * LANES];
        blocks(key, stream, first, &mut tail);
        rest.copy_from_slice(&tail[..rest.len()]);
    }
}

/// The kernel compiled for AVX-512 (F for 32-bit lane multiplies, VL and BW
/// for the shuffles between them).
///
/// # Safety
///
/// The CPU must have AVX-512F, VL, BW and DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
unsafe fn fill_avx512(seed: u64, stream: u64, out: &mut [f64]) {
    fill_lanes(seed, stream, out);
}

/// The kernel compiled for AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(seed: u64, stream: u64, out: &mut [f64]) {
    fill_lanes(seed, stream, out);
}

/// The kernel compiled for the baseline of the target.
fn fill_baseline(seed: u64, stream: u64, out: &mut [f64]) {
    fill_lanes(seed, stream, out);
}

/// An instruction set the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// AVX-512 (F, VL, BW, DQ).
    Avx512,
    /// AVX2.
    Avx2,
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
}

impl Simd {
    /// The widest instruction set this CPU has, as [`fill_unit`] uses it.
    ///
    /// # Examples
    ///
    /// ```
    /// use demos::philox::Simd;
    /// assert!(Simd::available().contains(&Simd::best()));
    /// ```
    pub fn best() -> Simd {
        Simd::available()[0]
    }

    /// The instruction sets this CPU can run, widest first
    /// ([`Simd::Baseline`] always).
    ///
    /// # Examples
    ///
    /// ```
    /// use demos::philox::Simd;
    /// assert_eq!(Simd::available().last(), Some(&Simd::Baseline));
    /// ```
    pub fn available() -> Vec<Simd> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
            {
                all.push(Simd::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Simd::Avx2);
            }
        }
        all.push(Simd::Baseline);
        all
    }

    /// A short name (`"AVX-512"`, `"AVX2"`, `"baseline"`).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(demos::philox::Simd::Avx2.name(), "AVX2");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "AVX-512",
            Simd::Avx2 => "AVX2",
            Simd::Baseline => "baseline",
        }
    }
}

/// Fills `out` with doubles `0..out.len()` of stream `stream` under key
/// `seed`, uniform in `[0, 1)`, using `simd`.
///
/// # Panics
///
/// If this CPU lacks `simd` (see [`Simd::available`]).
///
/// # Examples
///
/// ```
/// use demos::philox::{Simd, fill_unit_with};
/// let (mut a, mut b) = (vec![0.0; 100], vec![0.0; 100]);
/// fill_unit_with(Simd::Baseline, 42, 3, &mut a);
/// fill_unit_with(Simd::best(), 42, 3, &mut b);
/// assert_eq!(a, b);
/// ```
pub fn fill_unit_with(simd: Simd, seed: u64, stream: u64, out: &mut [f64]) {
    assert!(
        Simd::available().contains(&simd),
        "this CPU has no {}",
        simd.name()
    );
    match simd {
        // SAFETY: `Simd::available` found AVX-512F, VL, BW and DQ.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { fill_avx512(seed, stream, out) },
        // SAFETY: `Simd::available` found AVX2.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { fill_avx2(seed, stream, out) },
        _ => fill_baseline(seed, stream, out),
    }
}

/// Fills `out` with doubles `0..out.len()` of stream `stream` under key
/// `seed`, uniform in `[0, 1)`, with the widest instruction set this CPU
/// has. The numbers depend only on `(seed, stream)` and the position, never
/// on the CPU: a prefix of a longer fill is the shorter fill.
///
/// # Examples
///
/// ```
/// let mut row = vec![0.0; 5];
/// demos::philox::fill_unit(42, 0, &mut row);
/// // Double 0 is the low 64 bits of block 0 of stream 0, key 42.
/// let [x0, x1, _, _] = demos::philox::philox4x32_10([0, 0, 0, 0], [42, 0]);
/// let bits = u64::from(x0) | u64::from(x1) << 32;
/// assert_eq!(row[0], (bits >> 11) as f64 / (1u64 << 53) as f64);
/// ```
pub fn fill_unit(seed: u64, stream: u64, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has AVX-512F, VL, BW and DQ (just checked).
            return unsafe { fill_avx512(seed, stream, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (just checked).
            return unsafe { fill_avx2(seed, stream, out) };
        }
    }
    fill_baseline(seed, stream, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's `tests/kat_vectors`, the three `philox4x32 10` lines:
    /// counter (4 words), key (2 words), expected output (4 words).
    #[test]
    fn philox_matches_random123_known_answers() {
        let vectors: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (counter, key, expected) in vectors {
            assert_eq!(philox4x32_10(counter, key), expected, "{counter:x?}");
        }
    }

    #[test]
    fn to_unit_is_the_top_53_bits_times_two_to_the_minus_53_exactly() {
        let mut x = 0x0123_4567_89ab_cdefu64;
        let mut samples = vec![
            0,
            1,
            1 << 11,
            (1 << 11) - 1,
            u64::MAX,
            1 << 63,
            u64::MAX << 11,
        ];
        for _ in 0..10_000 {
            // xorshift64: spread-out test inputs
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x);
        }
        for s in samples {
            let want = (s >> 11) as f64 / (1u64 << 53) as f64;
            assert_eq!(to_unit(s).to_bits(), want.to_bits(), "{s:#x}");
            assert!((0.0..1.0).contains(&to_unit(s)));
        }
    }

    /// The row from the scalar reference, block by block.
    fn reference(seed: u64, stream: u64, len: usize) -> Vec<f64> {
        let key = [seed as u32, (seed >> 32) as u32];
        (0..len.div_ceil(2) as u64)
            .flat_map(|block| {
                let [x0, x1, x2, x3] = philox4x32_10(
                    [
                        block as u32,
                        (block >> 32) as u32,
                        stream as u32,
                        (stream >> 32) as u32,
                    ],
                    key,
                );
                [
                    to_unit(u64::from(x0) | u64::from(x1) << 32),
                    to_unit(u64::from(x2) | u64::from(x3) << 32),
                ]
            })
            .take(len)
            .collect()
    }

    #[test]
    fn every_instruction_set_gives_the_scalar_reference_bit_for_bit() {
        let available = Simd::available();
        assert_eq!(available.last(), Some(&Simd::Baseline));
        for len in [0, 1, 2, 31, 32, 33, 64, 1000, 4099] {
            for (seed, stream) in [
                (42, 0),
                (42, 7),
                (u64::MAX, u64::MAX - 1),
                (7 << 40, 1 << 33),
            ] {
                let want = reference(seed, stream, len);
                for &simd in &available {
                    let mut got = vec![f64::NAN; len];
                    fill_unit_with(simd, seed, stream, &mut got);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} differs from the reference: len {len}, seed {seed}, stream {stream}",
                        simd.name()
                    );
                }
                let mut best = vec![f64::NAN; len];
                fill_unit(seed, stream, &mut best);
                assert_eq!(best, want);
            }
        }
    }
}
