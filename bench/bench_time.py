"""Sampling time of each guard against plain sampling, measured alone (one thread, nothing else running).

Times from bench_seeds.py are taken while other jobs share the machine; this measures each method the same way,
interleaved (plain, then each guard, repeated), and reports the median time over repeats and the median over repeats
of each method's time divided by plain's in the same repeat.

    python bench/bench_time.py --out bench/results/time_bundled.csv
    python bench/bench_time.py --model runs/den --classifier runs/clf --out bench_out/time_den.csv
    python bench/bench_time.py --model runs/ft --method "c1:guard=cpsample-staged,classifier=runs/clf,max_push=1"

--method NAME:KEY=VALUE,... (repeatable, as in bench_seeds.py) times those settings against plain instead of the
default list.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from bench_seeds import parse_method

from cpsample.models.allocator import keep_freed_memory
from cpsample.models.pretrained import DiffusionModel
from cpsample.sampling.pipeline import generate

METHODS = {
    "plain": dict(guard="none"),
    "cpsample (calibrated default)": dict(guard="cpsample"),
    "cpsample, one stage": dict(guard="cpsample", one_stage=True),
    "two stages, overlapping (early_min_t 0)": dict(guard="cpsample-staged", scale=30.0, early_min_t=0),
    "two stages, late on x_t (alpha 0.1, s 30; the default before)": dict(
        guard="cpsample-staged", scale=30.0, early_min_t=201
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument(
        "--classifier",
        default="bundled",
        help="the CPSample classifier folder (its calibration decides what the default runs)",
    )
    parser.add_argument("--n", type=int, default=200, help="images per draw (one batch)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_out/time.csv"))
    parser.add_argument(
        "--method",
        action="append",
        default=None,
        help="NAME:KEY=VALUE,... (repeatable): time these settings against plain",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does (models/allocator.py), so times compare with its
    torch.set_num_threads(args.threads)
    model = DiffusionModel.from_pretrained(args.model)
    generate(model, n=8, steps=3, seed=0, progress=False)  # warm-up: first-call costs are not sampling time
    # the overlapping variant names the bundled early classifier; other models run what their calibration chose
    methods = (
        METHODS
        if args.classifier == "bundled"
        else {name: options for name, options in METHODS.items() if options["guard"] in ("none", "cpsample")}
    )
    if args.method:
        methods = {"plain": METHODS["plain"], **dict(parse_method(spec) for spec in args.method)}
    seconds = {name: [] for name in methods}
    for repeat in range(args.repeats):
        for name, options in methods.items():
            started = time.perf_counter()
            generate(
                model,
                n=args.n,
                steps=args.steps,
                seed=repeat,
                batch_size=args.n,
                progress=False,
                **{"classifier": args.classifier, **options},
            )
            seconds[name].append(time.perf_counter() - started)
    # Each repeat runs every method back to back, so a ratio within one repeat shares that moment's machine speed;
    # the median of those paired ratios moves less than a ratio of medians when the machine's speed drifts.
    rows = [
        {
            "method": name,
            "median_seconds": round(statistics.median(times), 2),
            "vs_plain": round(statistics.median(t / p for t, p in zip(times, seconds["plain"])), 3),
            "all_seconds": [round(t, 2) for t in times],
        }
        for name, times in seconds.items()
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['method']:>42}: {row['median_seconds']:.2f} s per {args.n} images, {row['vs_plain']:.2f}x plain")


if __name__ == "__main__":
    main()
