"""Where does CPSample's quality cost come from? Per-timestep attribution on one model, the same seeds throughout.

1. Size of the guidance term: per DDIM step, the share of samples guided and ||s sqrt(1 - abar) grad|| / ||eps||.
2. Windows: CPSample acting only for t in [low, high) (the classifier is still checked where it does not act),
   against acting everywhere: which steps buy the protection, which cost the quality.

    python bench/diagnose_guidance.py --alpha 0.1 --scale 10 --out bench_out/diagnose
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_frontier import write_csv
from bench_methods import judge_row, make_judge

from cpsample.evaluation import NearCopyDetector, load_feature_net
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.provenance import write_record
from cpsample.sampling.guards import GuardContext
from cpsample.sampling.guards.cpsample import CHECK_EVERY_STEP, CPSampleGuard
from cpsample.sampling.pipeline import generate
from cpsample.sampling.spec import build_guard

WINDOWS = ((0, 1000), (0, 100), (100, 200), (200, 300), (300, 1000))


class WindowedGuard(CPSampleGuard):
    """CPSample that changes eps only for low <= t < high, and records the size of what it adds."""

    def __init__(self, base: CPSampleGuard, low: int, high: int):
        super().__init__(base.classifier, base.alpha, base.scale, base.tau, CHECK_EVERY_STEP)
        self.low, self.high = low, high

    def correct(self, predictions, x_t, t, abar_t):
        (eps,) = predictions
        (adjusted,) = super().correct(predictions, x_t, t, abar_t)
        inside = self.low <= int(t[0]) < self.high
        change = (adjusted - eps).flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1)
        self.record(relative_change=change if inside else torch.zeros_like(change))
        return (adjusted if inside else eps,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/diagnose"))
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--classifier", default="bundled")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--n-samples", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset, split = training_data(resolve_model_dir(args.model, "denoiser"))
    judge = make_judge(
        NearCopyDetector(dataset.images[split.members]), load_feature_net("bundled"), dataset.images[split.nonmembers]
    )
    base = build_guard(
        "cpsample", GuardContext(model=args.model, classifier=args.classifier), alpha=args.alpha, scale=args.scale
    )
    common = dict(model=args.model, n=args.n_samples, seed=args.seed, batch_size=200, progress=False)
    rows = [judge_row(judge, args.model, "plain", generate(**common).images, 0.0, window="-")]
    per_step = None
    for low, high in WINDOWS:
        result = generate(guard=WindowedGuard(base, low, high), **common)
        fired = result.trace["fired"].astype(bool) & _inside(result.timesteps, low, high)[:, None]
        rows.append(
            judge_row(
                judge,
                args.model,
                "cpsample",
                result.images,
                0.0,
                window=f"[{low}, {high})",
                steps_guided=float(fired.mean()),
                samples_guided=float(fired.any(axis=0).mean()),
            )
        )
        if (low, high) == WINDOWS[0]:
            per_step = _per_step(result)
        print(
            f"window [{low}, {high}): {rows[-1]['near_copy_share']:.1%} near-copies, FD {rows[-1]['fd_digitnet']:.2f}",
            flush=True,
        )
    write_csv(args.out / "windows.csv", rows)
    write_csv(args.out / "per_step.csv", per_step)
    write_record(
        args.out,
        "bench-diagnose",
        {k: str(v) for k, v in vars(args).items()} | {"guard": base.settings()},
        {"windows": rows, "per_step": per_step},
    )


def _inside(timesteps: np.ndarray, low: int, high: int) -> np.ndarray:
    return (np.asarray(timesteps) >= low) & (np.asarray(timesteps) < high)


def _per_step(result) -> list[dict]:
    fired, change = result.trace["fired"].astype(bool), result.trace["relative_change"]
    rows = []
    for index, t in enumerate(result.timesteps):
        guided = fired[index]
        rows.append(
            {
                "step": index,
                "t": int(t),
                "share_guided": float(guided.mean()),
                "mean_relative_change_when_guided": float(change[index][guided].mean()) if guided.any() else 0.0,
            }
        )
    return rows


if __name__ == "__main__":
    main()
