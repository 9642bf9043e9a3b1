#!/usr/bin/env bash
# Regenerates the demo and example outputs the book shows (book/src/output/).
# Run from anywhere; needs a release build (it makes one). The outputs are
# checked in: they are real runs on the machine that made them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=book/src/output
mkdir -p "$out"
cargo build --release -p demos -p forkpool --examples --bins >/dev/null
demos=(memmap copy mmap fork-cow raw-array pid-fill random-fill locked memory-limit fifo)
for d in "${demos[@]}"; do
  echo "demos $d" >&2
  ./target/release/demos "$d" > "$out/$d.txt"
done
./target/release/demos fork-cow --write > "$out/fork-cow-write.txt"
./target/release/examples/quickstart > "$out/quickstart.txt"
echo "wrote $(ls "$out" | wc -l) files to $out" >&2
