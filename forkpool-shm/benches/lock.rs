//! Benchmark `lock` (to be written).

fn main() {}
