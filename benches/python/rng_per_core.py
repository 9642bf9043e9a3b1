"""Random generation per core: numpy's PCG64 `Generator.random(out=row)`
into one reused row (it stays in cache: the generator's speed, not the
memory's), on one thread.

Timed: `--rows` calls of `rng.random(out=row)` on a row of `--cols`
doubles, from one generator (the fastest numpy allows). Also reported, as
"per_row_seeded": the same with a generator made for every row from
`SeedSequence(42, spawn_key=(row,))`, as the random-fill workloads do to
make rows independent of the worker count.

    python3 rng_per_core.py --rows 2000 --cols 32000
"""

import numpy as np

from _common import parser, report, sample, setup, timed


def main():
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--cols", type=int, default=32000)
    p.add_argument("--generator", default="PCG64", help="a numpy bit generator")
    args = p.parse_args()
    setup(args)
    bit_generator = getattr(np.random, args.generator)
    row = np.empty(args.cols)

    def one_generator():
        rng = np.random.Generator(bit_generator(42))
        took, _ = timed(lambda: [rng.random(out=row) for _ in range(args.rows)])
        assert 0.0 <= row[-1] < 1.0
        return took

    def per_row_seeded():
        def fill():
            for r in range(args.rows):
                seq = np.random.SeedSequence(42, spawn_key=(r,))
                np.random.Generator(bit_generator(seq)).random(out=row)

        took, _ = timed(fill)
        return took

    runs = sample(args.reps, one_generator)
    seeded = sample(args.reps, per_row_seeded)
    report(
        f"numpy {args.generator} random(out=row), {args.rows} x {args.cols}, 1 thread",
        runs,
        per_row_seeded=sorted(seeded)[len(seeded) // 2],
        doubles=args.rows * args.cols,
    )


if __name__ == "__main__":
    main()
