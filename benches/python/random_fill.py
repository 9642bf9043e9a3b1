"""Random fill, one generator per row (numpy's default_rng, PCG64, seeded
from SeedSequence(seed).spawn(rows)[r], so the array is the same whatever the
worker count).

--processes 0: serial, into np.empty((rows, cols)) in this process.
--processes P: timed: creating a RawArray (zeroed by multiprocessing), then
Pool.map over P blocks of rows; the pool's start is not timed.
--existing --processes P: the RawArray is created before the clock starts;
timed: the fill by P fresh workers.

    python3 random_fill.py --mib 1024 --processes 0
    python3 random_fill.py --mib 1024 --processes 2 [--existing]
"""

import gc

import numpy as np

from _common import mp, parser, report, sample, setup, split, timed

ROW = 1 << 16
ARRAY = None
SEED = 42


def fill_row(row, out):
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(row,)))
    rng.random(out=out)


def init(raw, rows):
    global ARRAY
    ARRAY = np.frombuffer(raw, dtype=np.float64).reshape(rows, ROW)


def fill_block(bounds):
    lo, hi = bounds
    for r in range(lo, hi):
        fill_row(r, ARRAY[r])


def main():
    p = parser(__doc__)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--existing", action="store_true", help="do not time creating the array")
    args = p.parse_args()
    setup(args)
    rows = args.mib * (1 << 20) // 8 // ROW

    if args.processes == 0:

        def once():
            def serial():
                a = np.empty((rows, ROW))
                for r in range(rows):
                    fill_row(r, a[r])
                return a

            took, a = timed(serial)
            assert 0.0 <= a[-1, -1] < 1.0
            return took

        name = "serial"
    else:

        def once():
            created, raw = timed(mp.RawArray, "d", rows * ROW)
            if args.existing:
                created = 0.0
            pool = mp.Pool(args.processes, initializer=init, initargs=(raw, rows))
            filled, _ = timed(pool.map, fill_block, split(rows, args.processes), 1)
            assert 0.0 <= np.frombuffer(raw, dtype=np.float64)[-1] < 1.0
            pool.close()
            pool.join()
            del raw
            gc.collect()
            return created + filled

        name = f"{args.processes} processes" + (", existing array" if args.existing else "")
    runs = sample(args.reps, once)
    report(f"random fill {args.mib} MiB, {name}", runs)


if __name__ == "__main__":
    main()
