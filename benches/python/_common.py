"""What every workload script shares: options, timing, pinning, output.

Each script times its workload a few times after one warm-up run and prints
one JSON line on stdout, read by the comparison runner (`cargo run --release
-p forkpool-benches --bin compare`):

    {"workload": "...", "seconds": <median>, "runs": [...], "python": "3.11.7", ...}

The pools use the "fork" start method explicitly: the notes' methods (a
RawArray handed to the workers as a global through the initializer) rely on
it, it was the Linux default until Python 3.14, and forkpool forks too.
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

mp = multiprocessing.get_context("fork")


def parser(description):
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reps", type=int, default=5, help="timed runs (after one warm-up)")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument(
        "--cpu0",
        action="store_true",
        help="run this process and its workers on CPU 0 only",
    )
    return p


def setup(args):
    """Applies the common options (pinning happens before any pool starts)."""
    if args.cpu0:
        os.sched_setaffinity(0, {0})


def sample(reps, once):
    """Runs `once` one time untimed, then `reps` times; each call returns its
    own duration in seconds (so set-up inside it can stay untimed)."""
    once()
    return [once() for _ in range(max(1, reps))]


def timed(f, *args):
    """Calls f(*args); returns (seconds, result)."""
    t0 = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t0, out


def report(workload, runs, **extra):
    """Prints the one JSON line the runner reads."""
    out = {
        "workload": workload,
        "seconds": statistics.median(runs),
        "runs": runs,
        "python": platform.python_version(),
    }
    if "numpy" in sys.modules:
        out["numpy"] = sys.modules["numpy"].__version__
    out.update(extra)
    print(json.dumps(out), flush=True)


def split(n, parts):
    """[lo, hi) bounds of `parts` near-equal contiguous blocks of range(n)."""
    base, extra = divmod(n, parts)
    bounds, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds
