//! Benchmark `create` (to be written).

fn main() {}
