"""Scheduling: tasks that spin on the clock for given durations (the same
lists the Rust side runs), on a fresh pool or after other work.

    python3 sched.py --durations durations.json --mode map --before fresh
    python3 sched.py --durations durations.json --mode imap_unordered --before tiny

`--durations` is a JSON list of microseconds. `--before`: `fresh` (nothing
ran), `tiny` (imap_unordered of 20 000 tiny tasks, chunksize 1), `imap1ms`
(imap_unordered of 200 tasks of 1 ms, chunksize 1). `--kind`: `spin` on
the clock (CPU-bound) or `sleep`. `--mode`: `map`
(default chunks) or `imap_unordered` (chunksize 1). Each run builds its own
pool and runs the precondition untimed; only the job is timed.
"""

import json
import time

from _common import mp, parser, report, sample, setup, timed


def spin_us(us):
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass
    return us


def sleep_us(us):
    time.sleep(us * 1e-6)
    return us


def tiny(x):
    return x + 1


def before(pool, what):
    if what == "tiny":
        assert sum(1 for _ in pool.imap_unordered(tiny, range(20_000), 1)) == 20_000
    elif what == "imap1ms":
        assert sum(1 for _ in pool.imap_unordered(spin_us, [1000] * 200, 1)) == 200
    else:
        assert what == "fresh", what


def main():
    p = parser(__doc__)
    p.add_argument("--durations", required=True, help="JSON list of microseconds")
    p.add_argument("--mode", choices=["map", "imap_unordered"], default="map")
    p.add_argument("--before", choices=["fresh", "tiny", "imap1ms"], default="fresh")
    p.add_argument("--kind", choices=["spin", "sleep"], default="spin")
    args = p.parse_args()
    setup(args)
    with open(args.durations) as f:
        durations = json.load(f)

    task = spin_us if args.kind == "spin" else sleep_us

    def once():
        with mp.Pool(args.processes) as pool:
            before(pool, args.before)
            if args.mode == "map":
                took, out = timed(pool.map, task, durations)
            else:
                took, out = timed(lambda: list(pool.imap_unordered(task, durations, 1)))
            assert sum(out) == sum(durations)
            return took

    runs = sample(args.reps, once)
    report(f"sched {args.kind} {args.mode} {args.before} n={len(durations)}", runs, n=len(durations))


if __name__ == "__main__":
    main()
