"""Benchmark CPSample on the bundled model, in one run:

1. sampling-time ratio CPSample / plain at alpha in {0.5, 0.1, 0.001} (s fixed), and
2. the replication / quality trade-off over a small (alpha, s) grid (like the paper's Table 7).

Writes bench_out/bench.csv, bench_out/tradeoff.png and bench_out/cpsample.json. No assertions: timings are
measurements of this machine, read them, don't test them.

    python bench/bench_cpsample.py --n-samples 200 --out bench_out
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from cpsample.calibration.search import GridSettings, plot_grid, run_grid
from cpsample.provenance import seed_everything, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timing-alphas", default="0.5,0.1,0.001")
    parser.add_argument("--timing-scale", type=float, default=10.0)
    parser.add_argument("--grid-alphas", default="0.001,0.01,0.1")
    parser.add_argument("--grid-scales", default="10,100,1000")
    parser.add_argument("--parts", default="timing,tradeoff", help="which parts to run (comma-separated)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    floats = lambda text: tuple(float(x) for x in text.split(","))  # noqa: E731
    base = dict(n_samples=args.n_samples, steps=args.steps, device=args.device, seed=args.seed)
    parts = set(args.parts.split(","))
    timing = (
        run_grid(
            GridSettings(alphas=floats(args.timing_alphas), scales=(args.timing_scale,), quality_net=None, **base)
        )
        if "timing" in parts
        else []
    )
    grid = (
        run_grid(GridSettings(alphas=floats(args.grid_alphas), scales=floats(args.grid_scales), **base))
        if "tradeoff" in parts
        else []
    )
    rows = [{"part": "timing", **row} for row in timing] + [{"part": "tradeoff", **row} for row in grid]
    with open(args.out / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if grid:
        plot_grid(grid, args.out / "tradeoff.png")
    write_record(args.out, "bench", vars(args) | {"out": str(args.out)}, {"rows": rows})
    for row in timing:
        label = "plain" if row["alpha"] is None else f"alpha={row['alpha']:g}"
        print(
            f"{label:>14}: {row['seconds']:.1f}s for {row['n']} images, {row['time_vs_plain']:.2f}x plain, "
            f"steps guided {row['steps_guided'] if row['steps_guided'] is not None else '-'}"
        )
    for row in grid:
        label = "plain" if row["alpha"] is None else f"alpha={row['alpha']:g} s={row['scale']:g}"
        print(f"{label:>22}: near-copies {row['near_copy_share']:.1%}, FD {row['frechet_distance']:.2f}")


if __name__ == "__main__":
    main()
