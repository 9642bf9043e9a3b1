//! Benchmark `fill` (to be written).

fn main() {}
