"""Round-trip latency: sequential Pool.apply calls; prints the time per call.

    python3 apply_latency.py --n 2000 [--cpu0]
"""

from _common import mp, parser, report, sample, setup, timed


def inc(x):
    return x + 1


def main():
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    setup(args)
    with mp.Pool(args.processes) as pool:

        def once():
            def calls():
                for i in range(args.n):
                    assert pool.apply(inc, (i,)) == i + 1

            took, _ = timed(calls)
            return took / args.n

        runs = sample(args.reps, once)
    report("apply round trip" + (" (cpu0)" if args.cpu0 else ""), runs)


if __name__ == "__main__":
    main()
