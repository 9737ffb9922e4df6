"""One frontier picture (near-copy share against FD) from the pooled.csv of several bench_seeds.py runs.

Runs of the same model and seeds can be split over folders to use both cores (each with a copy of plain's .npz);
this gathers their rows, drops repeats of a method, groups them by defence (plain, cpsample, amg, rejection) and
draws each defence's Pareto front with bench_frontier's plot.

    python bench/plot_pooled.py runs/bench_a runs/bench_b --out bench/results/seeds_rgb --title "bundled-rgb"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bench_frontier import plot_frontier, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_seeds.py --out folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    rows = gathered(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "frontier.csv", rows)
    plot_frontier(rows, [], args.out / "frontier.png", args.title)
    print(f"{len(rows)} settings -> {args.out / 'frontier.csv'}, {args.out / 'frontier.png'}")


def gathered(runs: list[Path]) -> list[dict]:
    """Every run's pooled rows, each method once (the first run that has it), tagged with its defence."""
    rows: dict[str, dict] = {}
    for run in runs:
        with open(run / "pooled.csv") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(
                    row["method"],
                    {
                        "method": defence(json.loads(row["options"])),
                        "setting": row["method"],
                        **{k: v for k, v in row.items() if k != "method"},
                    },
                )
    return list(rows.values())


def defence(options: dict) -> str:
    if "rejection" in options:
        return "rejection"
    return "plain" if options.get("guard", "none") == "none" else str(options["guard"])


if __name__ == "__main__":
    main()
