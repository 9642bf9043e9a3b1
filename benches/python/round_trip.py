"""A value sent to a worker with Pool.apply and returned: the time per call.

    python3 round_trip.py --bytes 67108864 --kind bytes|numpy --n 1
"""

from _common import mp, parser, report, sample, setup, timed


def echo(x):
    return x


def main():
    p = parser(__doc__)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--kind", choices=["bytes", "numpy"], required=True)
    p.add_argument("--n", type=int, default=1, help="calls per timed run")
    args = p.parse_args()
    setup(args)
    if args.kind == "numpy":
        import numpy as np

        value = np.full(args.bytes // 8, 1.5)
    else:
        value = b"\x01" * args.bytes
    with mp.Pool(args.processes) as pool:

        def once():
            def calls():
                for _ in range(args.n):
                    back = pool.apply(echo, (value,))
                    assert len(back) == len(value)

            took, _ = timed(calls)
            return took / args.n

        runs = sample(args.reps, once)
    report(f"apply round trip, {args.bytes} bytes as {args.kind}", runs)


if __name__ == "__main__":
    main()
