"""Task throughput: Pool.map of a trivial function over N integers.

    python3 map_tasks.py --n 100000 --chunksize 1
    python3 map_tasks.py --n 1000000 --chunksize default
"""

from _common import mp, parser, report, sample, setup, timed


def inc(x):
    return x + 1


def main():
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--chunksize", default="1", help="an integer, or 'default'")
    args = p.parse_args()
    setup(args)
    chunksize = None if args.chunksize == "default" else int(args.chunksize)
    with mp.Pool(args.processes) as pool:

        def once():
            took, out = timed(pool.map, inc, range(args.n), chunksize)
            assert len(out) == args.n and out[-1] == args.n
            return took

        runs = sample(args.reps, once)
    report(f"map n={args.n} chunksize={args.chunksize}", runs, n=args.n)


if __name__ == "__main__":
    main()
