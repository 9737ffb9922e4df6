"""Could the guard skip checking samples that were far from firing at its last check? How far a sample's confidence
moves between two checks of one run, per stage, from the guard's own trace (bench/README.md, Finding 25).

For each stage (the one-stage guard, or each stage of the calibrated default) it prints the share of sample-checks
that fired, how often a sample that fired fires again at the next check, the smaller label probability p_min at the
previous check of the samples that start firing, and for a rule "skip the check where p_min >= m at the previous
check": the share of checks it would skip and the fires it would miss. With --screen-error it also checks every
sample in bfloat16 beside float32 and prints the largest difference in log-odds |log p1 - log p0| (the bfloat16
screen's room is log 2).

    OMP_NUM_THREADS=1 python bench/check_margins.py --default
    OMP_NUM_THREADS=1 python bench/check_margins.py --alpha 0.1 --scale 35.7 --max-t 400 --screen-error
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from profile_guard import add_guard_arguments, chosen_spec

from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate

SKIP_MARGINS = (0.1, 0.2, 0.3, 0.4, 0.45, 0.48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_guard_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screen-error", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the numbers")
    args = parser.parse_args()
    adapter = load_adapter(args.model)
    guard = adapter.guard(chosen_spec(args), args.classifier)
    stages = getattr(guard, "guards", [guard])
    errors = {index: [] for index in range(len(stages))}
    if args.screen_error:
        for index, stage in enumerate(stages):
            stage._check = both_precisions(stage, errors[index])
    result = generate(adapter, guard, SampleConfig(n=args.n_samples, seed=args.seed, progress=False))
    prefixes = getattr(guard, "prefixes", None)
    report = {}
    for index, stage in enumerate(stages):
        prefix = "" if prefixes is None else f"{prefixes[index]}."
        p1, fired = result.trace[f"{prefix}p1"], result.trace[f"{prefix}fired"].astype(bool)
        numbers = margins(np.minimum(p1, 1 - p1), fired, stage.alpha)
        if errors[index]:
            numbers["max_bfloat16_log_odds_error"] = float(max(errors[index]))
        report[f"stage {index} (alpha {stage.alpha})"] = numbers
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "stages": report}, indent=2))


def margins(p_min: np.ndarray, fired: np.ndarray, alpha: float) -> dict:
    """p_min, fired: (steps, N) traces of one stage; only the steps it checked count."""
    checked = ~np.isnan(p_min).all(axis=1)
    p_min, fired = p_min[checked], fired[checked]
    before, now = p_min[:-1], fired[1:]
    starting = now & ~fired[:-1]
    return {
        "checks": int(p_min.size),
        "fired_share": float(fired.mean()),
        "fires_again_share": float(now[fired[:-1]].mean()) if fired[:-1].any() else None,
        "starting_fires": int(starting.sum()),
        "p_min_before_starting_fire": {
            "median": float(np.median(before[starting])),
            "q90": float(np.quantile(before[starting], 0.9)),
            "max": float(before[starting].max()),
        }
        if starting.any()
        else None,
        "skip_rule": {
            f"skip if p_min >= {margin} at the last check": {
                "checks_skipped": float((before >= margin).mean()),
                "fires_missed": int((now & (before >= margin)).sum()),
                "fires": int(now.sum()),
            }
            for margin in SKIP_MARGINS
            if margin > alpha
        },
    }


def both_precisions(stage, errors: list):
    """The stage's check in float32 (what it returns) and in bfloat16 beside it, noting the largest log-odds gap."""

    def check(judged, t):
        with torch.no_grad():
            exact = stage.classifier(judged, t).float()
            with torch.autocast(judged.device.type, dtype=torch.bfloat16):
                rough = stage.classifier(judged, t).float()
        gap = ((rough[:, 1] - rough[:, 0]).abs() - (exact[:, 1] - exact[:, 0]).abs()).abs()
        errors.append(float(gap.max()))
        return exact.softmax(dim=-1)

    return check


if __name__ == "__main__":
    main()
