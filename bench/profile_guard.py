"""Where CPSample's extra sampling time goes, at one setting: the denoiser, the classifier's check (every sample, no
graph), the push (the gradient of the fired samples and its bookkeeping) and the rest of the loop, against plain
sampling on the same noise. Each part is timed by wrapping it; medians over repeats, plain and guarded interleaved.

    OMP_NUM_THREADS=1 python bench/profile_guard.py --model bundled --alpha 0.1 --scale 25 --max-t 400
    OMP_NUM_THREADS=1 python bench/profile_guard.py --model bundled --default   # the calibrated default (two stages)

With --default the guard is `--guard cpsample` with no knob given: what the classifier's calibration chose (on the
bundled model two stages, `cpsample-staged`); the check and push of every stage are summed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cpsample.models.allocator import keep_freed_memory
from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.spec import GuardSpec


class Clock:
    """Seconds spent inside wrapped callables, by name."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started

        return timed


def add_guard_arguments(parser: argparse.ArgumentParser, scale: float = 35.7) -> None:
    """The model, classifier and CPSample setting a guard benchmark runs (check_margins.py and replay_guard.py too)."""
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--classifier", default="bundled")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--scale", type=float, default=scale)
    parser.add_argument("--max-t", type=int, default=400)
    parser.add_argument(
        "--default", action="store_true", help="the calibrated default (no knob given) instead of the knobs above"
    )
    parser.add_argument("--n-samples", type=int, default=300)


def chosen_spec(args: argparse.Namespace) -> GuardSpec:
    """The calibrated default with --default, else one-stage CPSample at the knobs given."""
    if args.default:
        return GuardSpec.create("cpsample")
    return GuardSpec.create("cpsample", alpha=args.alpha, scale=args.scale, tau=0.001, max_t=args.max_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_guard_arguments(parser, scale=25.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the medians")
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does (models/allocator.py), so times compare with its
    adapter = load_adapter(args.model)
    spec = chosen_spec(args)
    config = SampleConfig(n=args.n_samples, progress=False)
    runs = {"plain": [], "cpsample": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(profile(adapter, spec if name == "cpsample" else "none", config, args.classifier))
    medians = {
        name: {part: statistics.median(r[part] for r in rows) for part in rows[0]} for name, rows in runs.items()
    }
    plain = medians["plain"]["total"]
    for name, parts in medians.items():
        ratios = [row["total"] / base["total"] for row, base in zip(runs[name], runs["plain"])]
        print(
            f"{name}: {parts['total']:.1f} s ({parts['total'] / plain:.3f}x plain; paired ratios "
            f"{', '.join(f'{ratio:.3f}' for ratio in ratios)}, median {statistics.median(ratios):.3f}x)"
        )
        for part, seconds in parts.items():
            if part != "total":
                print(f"  {part:>10}: {seconds:6.2f} s = {seconds / plain:6.1%} of plain's time")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "settings": vars(args) | {"out": str(args.out), "guard": str(spec)},
                    "medians": medians,
                    "runs": runs,
                    "paired_ratio_median": statistics.median(
                        row["total"] / base["total"] for row, base in zip(runs["cpsample"], runs["plain"])
                    ),
                },
                indent=2,
            )
        )


def profile(adapter, spec, config: SampleConfig, classifier: str) -> dict:
    """One run's seconds: in all, in the denoiser, in the guard's check and push (push includes the check)."""
    clock = Clock()
    denoiser = adapter.denoiser
    adapter.denoiser = lambda conditions: clock.wrap("denoiser", denoiser(conditions))
    guard = adapter.guard(spec, classifier)
    for member in getattr(guard, "guards", [guard]):  # a two-stage guard's stages, or the guard itself
        if hasattr(member, "push"):
            member._check = clock.wrap("check", member._check)
            member.push = clock.wrap("push", member.push)
    torch.manual_seed(0)
    started = time.perf_counter()
    generate(adapter, guard, config)
    total = time.perf_counter() - started
    adapter.denoiser = denoiser
    check, push = clock.spent.get("check", 0.0), clock.spent.get("push", 0.0)
    denoise = clock.spent["denoiser"]
    return {
        "total": total,
        "denoiser": denoise,
        "check": check,
        "gradient": push - check,
        "rest": total - denoise - push,
    }


if __name__ == "__main__":
    main()
