"""The notes' pid-fill program (method 6), end to end: create a
`multiprocessing.Array(c_double, rows * cols, lock=False)`, wrap it with
`np.frombuffer(...).reshape(rows, cols)`, fill it with 42, start a
`Pool(processes)`, `pool.map(worker_fn, range(rows))` where each worker
checks its row still holds 42 and sets it to its pid, then verify: no 42
left, every item counted, every worker did work.

The notes count with `collections.Counter(main_nparray.flat)`, a Python
object per item (minutes at this size); here the counting is numpy's: the
distinct values of the first column, then one `np.count_nonzero(a == v)`
pass each, and the total must be every item (so no value outside the first
column can hide). That is the fastest honest numpy verification we know,
so the comparison does not flatter forkpool.

Timed: create -> verified (the pool's start included, as in forkpool's
`demos pid-fill`); closing the pool is not. Prints the phases too.

    python3 pid_fill.py --rows 2000 --cols 32000 --processes 2
"""

import ctypes
import gc
import os
import time

import numpy as np

from _common import mp, parser, report, sample, setup

DEFAULT_VALUE = 42
ARRAY = None


def worker_fn(idx):
    """The notes' worker: check the row is untouched, then write the pid."""
    row = ARRAY[idx]
    untouched = bool((row == DEFAULT_VALUE).all())
    row[:] = os.getpid()
    return untouched


def main():
    global ARRAY
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--cols", type=int, default=32000)
    args = p.parse_args()
    setup(args)
    rows, cols, processes = args.rows, args.cols, args.processes
    phases = {}

    def once():
        global ARRAY
        t0 = time.perf_counter()
        base = mp.Array(ctypes.c_double, rows * cols, lock=False)
        ARRAY = np.frombuffer(base, dtype=ctypes.c_double).reshape(rows, cols)
        assert ARRAY.base.base is base
        t1 = time.perf_counter()
        ARRAY.fill(DEFAULT_VALUE)
        t2 = time.perf_counter()
        pool = mp.Pool(processes=processes)
        t3 = time.perf_counter()
        untouched = pool.map(worker_fn, range(rows))
        t4 = time.perf_counter()
        assert all(untouched), "a row was written twice"
        pids = np.unique(ARRAY[:, 0])
        counts = {pid: int(np.count_nonzero(ARRAY == pid)) for pid in pids}
        assert DEFAULT_VALUE not in counts
        assert sum(counts.values()) == rows * cols
        assert len(counts) == processes
        t5 = time.perf_counter()
        pool.close()
        pool.join()
        ARRAY = None
        del base
        gc.collect()
        for name, took in [
            ("create", t1 - t0),
            ("fill with 42", t2 - t1),
            ("start the pool", t3 - t2),
            ("workers write their pids", t4 - t3),
            ("verify", t5 - t4),
        ]:
            phases.setdefault(name, []).append(took)
        return t5 - t0

    runs = sample(args.reps, once)
    # the first call of `once` is sample's untimed warm-up
    medians = {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in phases.items()}
    report(
        f"pid-fill {rows} x {cols}, {processes} processes, create -> verified",
        runs,
        phases=medians,
    )


if __name__ == "__main__":
    main()
