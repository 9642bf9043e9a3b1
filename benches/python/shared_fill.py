"""Fill a shared float64 array (RawArray + np.frombuffer), one block of rows
per worker.

warm: the workers have mapped every page (their initializer read the whole
array once; reading, because the initializers run while the first tasks may
already be filling); timed: Pool.map of the fill. The steady state.
cold: timed: creating the RawArray (multiprocessing zeroes it in the parent)
and the fresh workers' first fill; the pool's start is not timed.

    python3 shared_fill.py --mib 256 --processes 2 --mode warm
"""

import gc

import numpy as np

from _common import mp, parser, report, sample, setup, split, timed

ROW = 1 << 16
ARRAY = None


def init(raw, rows, touch):
    global ARRAY
    ARRAY = np.frombuffer(raw, dtype=np.float64).reshape(rows, ROW)
    if touch:
        ARRAY.sum()  # maps every page (writable: shared memory needs no write-notify)


def fill_block(job):
    lo, hi, value = job
    ARRAY[lo:hi] = value


def main():
    p = parser(__doc__)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--mode", choices=["warm", "cold"], required=True)
    args = p.parse_args()
    setup(args)
    rows = args.mib * (1 << 20) // 8 // ROW
    blocks = split(rows, args.processes)

    if args.mode == "warm":
        raw = mp.RawArray("d", rows * ROW)
        pool = mp.Pool(args.processes, initializer=init, initargs=(raw, rows, True))
        view = np.frombuffer(raw, dtype=np.float64)
        value = [0.0]

        def once():
            value[0] += 1.0
            jobs = [(lo, hi, value[0]) for lo, hi in blocks]
            took, _ = timed(pool.map, fill_block, jobs, 1)
            assert view[-1] == value[0]
            return took

        runs = sample(args.reps, once)
        pool.close()
        pool.join()
    else:

        def once():
            created, raw = timed(mp.RawArray, "d", rows * ROW)
            pool = mp.Pool(args.processes, initializer=init, initargs=(raw, rows, False))
            jobs = [(lo, hi, 1.0) for lo, hi in blocks]
            filled, _ = timed(pool.map, fill_block, jobs, 1)
            assert np.frombuffer(raw, dtype=np.float64)[-1] == 1.0
            pool.close()
            pool.join()
            del raw
            gc.collect()
            return created + filled

        runs = sample(args.reps, once)
    report(f"fill {args.mib} MiB, {args.processes} processes, {args.mode}", runs)


if __name__ == "__main__":
    main()
