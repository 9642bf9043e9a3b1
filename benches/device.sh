#!/bin/bash
# Prepares the 16-core measurements of issues 9 and 13 for the device
# machine (no Rust there: binaries are built here and carried). See
# DEVICE.md in the shared notes for how a session is lent the machine.
#
#   benches/device.sh            # here: builds and fills .devkit/ (ignored by git)
#   # then, on the device, through the device tool's `run`:
#   #   command: bash .devkit/run.sh [STEP ...]     carry: [".devkit"]
#   # STEP: pid-fill-full sched16 random16 map16 (default: all, in that order;
#   # about 10 minutes in all, so name fewer steps if less device time is left)
#
# Each step is bounded by a timeout and writes its log to $OUT/<step>.log.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.devkit/' "$exclude" 2>/dev/null || echo '/.devkit/' >> "$exclude"

cargo build --release -p demos -p forkpool-benches --bins
rm -rf .devkit
mkdir -p .devkit
cp target/release/demos target/release/compare .devkit/
strip .devkit/demos .devkit/compare
# `compare` finds its Python scripts under benches/python of the directory
# it runs in (the device's copy of this tree) when its build path is absent.

cat > .devkit/run.sh <<'SH'
#!/bin/bash
# Runs on the 16-core machine from the repository root; logs go to $OUT.
K=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/devkit-out}
mkdir -p "$OUT"
step() {
    local name=$1 secs=$2
    shift 2
    echo "== $name: $*"
    timeout -k 5 "$secs" "$@" > "$OUT/$name.log" 2>&1
    echo "rc=$?"
    tail -n 25 "$OUT/$name.log"
}
{ nproc; free -g; uptime; python3 -c 'import numpy, sys; print(sys.version, numpy.__version__)'; } > "$OUT/machine.log" 2>&1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(pid-fill-full sched16 random16 map16)
for s in "${steps[@]}"; do
    case $s in
        # Issue 13: the notes' 25.6 GB pid-fill, Pool(4) as in the notes,
        # against the notes' Python code in the same run (goal: 5x).
        pid-fill-full) step "$s" 330 "$K/compare" --only pid --processes 4 --pid-fill-size 10000x320000 --reps 1 ;;
        # Issue 9: the scheduling table on 16 processes (goal: >= 0.9 in every
        # row, tiny-then-long default map included; >= 0.95 of raw fork).
        sched16) step "$s" 240 "$K/compare" --only sched --processes 16 --reps 3 ;;
        # Issue 13: the random fill at the notes' size on 16 workers, with its
        # phase table (goal: 80 % of the machine's memory-write bandwidth).
        random16) step "$s" 180 "$K/demos" random-fill --rows 10000 --cols 320000 --processes 16 --check-processes 16 ;;
        # Issue 9: tiny-task throughput on 16 processes.
        map16) step "$s" 120 "$K/compare" --only map --processes 16 ;;
        *) echo "unknown step $s (pid-fill-full sched16 random16 map16)"; exit 2 ;;
    esac
done
SH
chmod +x .devkit/run.sh
du -sh .devkit
echo "ready: run 'bash .devkit/run.sh' on the device with carry [\".devkit\"]"
