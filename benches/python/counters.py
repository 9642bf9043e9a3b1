"""A counter incremented N times by each of the workers at once; prints the
time per increment.

locked: multiprocessing.Value('q') (lock=True): `with v.get_lock(): v.value += 1`.
lockfree: Python has no atomic add (`v.value += 1` on a Value(lock=False)
loses updates), so each worker counts in its own slot of a RawArray, the
way a Python user avoids the lock.

    python3 counters.py --n 100000 --mode locked
"""

from _common import mp, parser, report, sample, setup, timed

COUNTER = None
SLOTS = None


def init(counter, slots):
    global COUNTER, SLOTS
    COUNTER, SLOTS = counter, slots


def count_locked(job):
    n, _slot = job
    for _ in range(n):
        with COUNTER.get_lock():
            COUNTER.value += 1


def count_own_slot(job):
    n, slot = job
    i = slot * 8  # 64 bytes apart
    for _ in range(n):
        SLOTS[i] += 1


def main():
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--mode", choices=["locked", "lockfree"], required=True)
    args = p.parse_args()
    setup(args)
    counter = mp.Value("q", 0)
    slots = mp.RawArray("q", 8 * args.processes)
    f = count_locked if args.mode == "locked" else count_own_slot
    total = lambda: counter.value if args.mode == "locked" else sum(slots)  # noqa: E731
    with mp.Pool(args.processes, initializer=init, initargs=(counter, slots)) as pool:
        jobs = [(args.n, i) for i in range(args.processes)]

        def once():
            before = total()
            took, _ = timed(pool.map, f, jobs, 1)
            ops = args.n * args.processes
            assert total() - before == ops
            return took / ops

        runs = sample(args.reps, once)
    report(f"counter, {args.mode}", runs)


if __name__ == "__main__":
    main()
