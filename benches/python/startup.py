"""Pool start-up: Pool(P) + close() + join(), with the parent holding
BALLAST MiB of private memory (a bytes object, every page written) or a
RawArray of that size (shared; multiprocessing zeroes it, so it is mapped).

    python3 startup.py --processes 4 --ballast-mib 1024 --ballast private
"""

from _common import mp, parser, report, sample, setup, timed


def main():
    p = parser(__doc__)
    p.add_argument("--ballast-mib", type=int, default=0)
    p.add_argument("--ballast", choices=["private", "shared"], default="private")
    args = p.parse_args()
    setup(args)
    size = args.ballast_mib << 20
    if args.ballast == "private":
        ballast = b"\x01" * size
    else:
        ballast = mp.RawArray("b", size)

    def once():
        def cycle():
            pool = mp.Pool(args.processes)
            pool.close()
            pool.join()

        took, _ = timed(cycle)
        return took

    runs = sample(args.reps, once)
    assert len(ballast) == size
    report(f"Pool({args.processes}) start+close+join, {args.ballast_mib} MiB {args.ballast}", runs)


if __name__ == "__main__":
    main()
