"""mpi4py.futures' side of the comparison with forkpool-mpi.

The other side is forkpool-mpi's `bench_pool` example; both run the same
three workloads on 4 ranks (rank 0 the pool, 3 workers):

    mpirun -n 4 python3 -m mpi4py.futures benches/python/mpi_pool.py --reps 5
    mpirun -n 4 target/release/examples/bench_pool --reps 5

- per-task: `executor.map(noop, range(N), chunksize=1)`, results in order;
- map: 1 M tiny items (`x * x`), at forkpool-mpi's default chunksize
  (items / (4 x workers)), so both send the same number of tasks;
- random fill: a new 2000 x 32000 array of doubles in an MPI-3 shared
  window (`MPI.Win.Allocate_shared` on the node communicator: rank 0
  gives the memory, the workers join the collective call from a task
  each), each row filled by numpy from its own stream
  (`default_rng([seed, row]).random(out=row)`, PCG64; forkpool-mpi uses
  the `demos` row kernel: the same work per value, not the same numbers).

Each workload runs once to warm up, then --reps times; one JSON line per
workload gives the median, like the other scripts of benches/python.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor

# On a worker: the array of the current fill and its window.
ARRAY = None
WINDOW = None
# On every rank: the node's communicator, made in the first collective
# call (Split_type is collective over COMM_WORLD: the master must not call
# it before the workers are in a task that calls it too).
NODE = None


def node_comm():
    global NODE
    if NODE is None:
        NODE = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    return NODE


def noop(x):
    return x


def square(x):
    return x * x


def join_allocation(shape):
    """On a worker: joins the collective allocation; the master gives the
    memory. Returns this rank, so the master sees every worker joined."""
    global ARRAY, WINDOW
    WINDOW = MPI.Win.Allocate_shared(0, 8, comm=node_comm())
    buf, _ = WINDOW.Shared_query(0)
    ARRAY = np.ndarray(buffer=buf, dtype="f8", shape=shape)
    return MPI.COMM_WORLD.Get_rank()


def join_free(_):
    """On a worker: joins the collective free of the window."""
    global ARRAY, WINDOW
    ARRAY = None
    WINDOW.Free()
    WINDOW = None
    return MPI.COMM_WORLD.Get_rank()


def fill_block(task):
    start, end, seed = task
    for r in range(start, end):
        np.random.default_rng([seed, r]).random(out=ARRAY[r])
    return end - start


def collective(executor, workers, on_worker, arg, on_master):
    """Runs `on_worker(arg)` on every worker (one task each: a worker in
    a collective call cannot take another) while the master runs
    `on_master()`; checks every worker joined."""
    futures = [executor.submit(on_worker, arg) for _ in range(workers)]
    result = on_master()
    ranks = sorted(f.result() for f in futures)
    assert ranks == list(range(1, workers + 1)), ranks
    return result


def timed(reps, f):
    f()
    runs = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def report(workload, unit, per_run, timing):
    secs, runs = timing
    print(
        json.dumps(
            {
                "workload": workload,
                "seconds": secs,
                unit: per_run / secs,
                "runs": runs,
                "side": "mpi4py.futures",
                "python": sys.version.split()[0],
                "mpi4py": __import__("mpi4py").__version__,
            }
        ),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--cols", type=int, default=32_000)
    args = p.parse_args()

    with MPIPoolExecutor() as ex:
        workers = ex.num_workers
        n = args.tasks

        def per_task():
            out = list(ex.map(noop, range(n), chunksize=1))
            assert len(out) == n

        report(f"per-task, {n} tasks, chunksize 1", "tasks_per_s", n, timed(args.reps, per_task))

        m = args.items
        chunk = max(1, -(-m // (4 * workers)))

        def map_items():
            out = list(ex.map(square, range(m), chunksize=chunk))
            assert len(out) == m and out[7] == 49

        report(
            f"map {m} tiny items, chunksize {chunk}",
            "items_per_s",
            m,
            timed(args.reps, map_items),
        )

        rows, cols = args.rows, args.cols

        def fill():
            win = collective(
                ex,
                workers,
                join_allocation,
                (rows, cols),
                lambda: MPI.Win.Allocate_shared(rows * cols * 8, 8, comm=node_comm()),
            )
            per_block = max(1, -(-rows // (4 * workers)))
            blocks = [(s, min(s + per_block, rows), 42) for s in range(0, rows, per_block)]
            filled = sum(ex.map(fill_block, blocks, chunksize=1))
            assert filled == rows
            buf, _ = win.Shared_query(0)
            arr = np.ndarray(buffer=buf, dtype="f8", shape=(rows, cols))
            assert 0.0 <= arr[rows - 1, cols - 1] < 1.0
            del arr, buf
            collective(ex, workers, join_free, None, win.Free)

        report(
            f"random fill {rows} x {cols} f64, new node-shared array",
            "bytes_per_s",
            rows * cols * 8,
            timed(args.reps, fill),
        )


if __name__ == "__main__":
    main()
