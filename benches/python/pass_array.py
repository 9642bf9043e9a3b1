"""A large array summed by TASKS tasks, each its own block: passed by value
(pickled into every task, Pool.map's default) or shared (a RawArray handed
to the workers once, through the initializer, read with np.frombuffer).

    python3 pass_array.py --mib 256 --tasks 4 --mode value
    python3 pass_array.py --mib 256 --tasks 4 --mode shared
"""

import numpy as np

from _common import mp, parser, report, sample, setup, split, timed

SHARED = None


def block_sum_value(job):
    block, blocks, data = job
    lo, hi = split(len(data), blocks)[block]
    return float(data[lo:hi].sum())


def init_shared(raw):
    global SHARED
    SHARED = np.frombuffer(raw, dtype=np.float64)


def block_sum_shared(bounds):
    lo, hi = bounds
    return float(SHARED[lo:hi].sum())


def main():
    p = parser(__doc__)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--mode", choices=["value", "shared"], required=True)
    args = p.parse_args()
    setup(args)
    n = args.mib * (1 << 20) // 8
    data = (np.arange(n) % 1000).astype(np.float64)
    expected = float(data.sum())  # small integers: exact in any order

    if args.mode == "value":
        pool = mp.Pool(args.processes)
        jobs = [(b, args.tasks, data) for b in range(args.tasks)]

        def once():
            took, sums = timed(pool.map, block_sum_value, jobs)
            assert sum(sums) == expected
            return took

    else:
        raw = mp.RawArray("d", n)
        np.frombuffer(raw, dtype=np.float64)[:] = data
        pool = mp.Pool(args.processes, initializer=init_shared, initargs=(raw,))
        jobs = split(n, args.tasks)

        def once():
            took, sums = timed(pool.map, block_sum_shared, jobs)
            assert sum(sums) == expected
            return took

    runs = sample(args.reps, once)
    pool.close()
    pool.join()
    report(f"{args.mib} MiB to {args.tasks} tasks, {args.mode}", runs)


if __name__ == "__main__":
    main()
