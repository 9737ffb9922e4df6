"""Every defence side by side on the bundled model (issue: peers as strategies), in one run:

plain DDIM, CPSample, rejection sampling and AMG on the unconditional model: near-copy share (pixel cosine > 0.98,
exact CI), FD_digitnet to held-out digits, seconds per accepted image, and how many distinct training digits the
SIDE extraction attack recovers from the plain and the CPSample-protected sampler, and the sample-only membership
attack
(black box: members vs held-out digits by distance to the nearest sample, AUC and TPR at 1% FPR) on every method's
samples. With --conditional-model (a
folder from `cpsample train-conditional` on the same 200 members), plain CFG, delayed CFG, opposite guidance and
CPSample on top of CFG, with the share of samples the digit net reads as their requested class.

    python bench/bench_methods.py --n-samples 200 --out bench_out [--conditional-model runs/cond]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from cpsample.attacks import SampleNNAttack
from cpsample.attacks.mia import pick_images
from cpsample.evaluation import NearCopyDetector, load_feature_net
from cpsample.evaluation.measures import (
    ClassAgreement,
    FrechetDistance,
    Judge,
    NearCopyShare,
    SampleOnlyMembershipAUC,
    Samples,
    Time,
)
from cpsample.models.allocator import keep_freed_memory
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.provenance import seed_everything, write_record
from cpsample.sampling.pipeline import generate
from cpsample.sampling.rejection import rejection_sample

ALPHA, SCALE = None, None  # the classifier's calibration, as the CLI uses it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="near-copy cosine threshold (default: the yardstick's for pixels, 0.98)",
    )
    parser.add_argument("--side-pool", type=int, default=200)
    parser.add_argument("--conditional-model", type=Path, default=None)
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--skip-unconditional", action="store_true", help="only the conditional rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does (models/allocator.py), so times compare with its
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset, split = training_data(resolve_model_dir("bundled", "denoiser"))
    members, heldout = dataset.images[split.members], dataset.images[split.nonmembers]
    detector = NearCopyDetector(members, args.threshold)
    judge = make_judge(
        detector,
        load_feature_net("bundled", channels=members.shape[1]),
        heldout,
        sample_attack(dataset, split, args.threshold, args.seed),
    )
    rows = [] if args.skip_unconditional else unconditional_rows(args, judge, detector)
    if args.conditional_model is not None:
        rows += conditional_rows(args, judge)
    with open(args.out / "methods.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    write_record(args.out, "bench-methods", {k: str(v) for k, v in vars(args).items()}, {"rows": rows})
    print(markdown_table(rows))


def make_judge(detector: NearCopyDetector, net, heldout: np.ndarray, attack: SampleNNAttack | None = None) -> Judge:
    """One yardstick for every method: near-copies, quality (FD fitted on the held-out images once), time, class
    agreement and, with `attack`, the sample-only membership attack (black box: it reads only the samples, so every
    defence gets the same column)."""
    return Judge(
        [
            NearCopyShare(detector),
            FrechetDistance(net, heldout, column="fd_digitnet"),
            Time(per_image=True),
            ClassAgreement(net),
            FilledLater(),
            SampleOnlyMembershipAUC(attack),
        ]
    )


class FilledLater:
    """The columns later steps fill in (rejection sampling's calls, the SIDE attack): None until then, in the same
    place in every row."""

    name = "filled_later"
    columns = ("denoiser_calls_per_image", "side_distinct_extracted", "side_unguided_same_budget")

    def __call__(self, samples: Samples) -> dict:
        return dict.fromkeys(self.columns)


def judge_row(judge: Judge, model: str, method: str, images, seconds: float, labels=None, **extra) -> dict:
    """The judge's row for one method's samples, after its model and method, before `extra`."""
    return {"model": model, "method": method, **judge(images, seconds=seconds, labels=labels), **extra}


def sample_attack(dataset, split, threshold: float | None, seed: int, n_members: int | None = None) -> SampleNNAttack:
    """The sample-only attack on the model's members vs as many random held-out images, picked as `run_mia` picks
    them."""
    member_idx, nonmember_idx = pick_images(split.members, split.nonmembers, n_members, None, seed)
    return SampleNNAttack(dataset.images[member_idx], dataset.images[nonmember_idx], threshold=threshold)


def unconditional_rows(args, judge: Judge, detector: NearCopyDetector) -> list[dict]:
    from cpsample.attacks.side import SideConfig, run_side

    common = dict(n=args.n_samples, steps=args.steps, seed=args.seed, progress=False)
    rows = []
    for method, options in (
        ("plain", {"guard": "none"}),
        ("cpsample", {"guard": "cpsample", "alpha": ALPHA, "scale": SCALE}),
        ("amg", {"guard": "amg"}),
    ):
        started = time.time()
        result = generate(**common, **options)
        rows.append(judge_row(judge, "bundled", method, result.images, time.time() - started))
        print(f"{method}: done", flush=True)
    started = time.time()
    rejected = rejection_sample(
        lambda count, r: generate(**{**common, "n": count, "seed": args.seed + 1000 * r}),
        args.n_samples,
        detector,
    )
    rows.append(
        judge_row(
            judge,
            "bundled",
            "rejection",
            rejected.images,
            time.time() - started,
            denoiser_calls_per_image=rejected.calls_per_image,
        )
    )
    side = SideConfig(samples=args.side_pool, attack_steps=25, seed=args.seed, threshold=args.threshold)
    for method, defence in (("plain", "none"), ("cpsample", "cpsample")):
        result = run_side(defence=defence, alpha=ALPHA, scale=SCALE, config=side, progress=False)
        row = next(r for r in rows if r["method"] == method)
        row["side_distinct_extracted"] = result.attack["distinct_extracted"]
        row["side_unguided_same_budget"] = (result.pool_same_budget or {}).get("distinct_extracted")
        print(f"SIDE vs {method}: {result.attack['distinct_extracted']} distinct training digits", flush=True)
    return rows


def conditional_rows(args, judge: Judge) -> list[dict]:
    from cpsample.sampling.conditional import generate_conditional
    from cpsample.sampling.guards.delayed_cfg import DelayedCFGGuard, OppositeGuidanceGuard

    labels = np.arange(args.n_samples) % 10
    classifier = str(resolve_model_dir("bundled", "classifier"))  # trained on the same 200 members
    common = dict(guidance_scale=args.cfg_scale, steps=args.steps, seed=args.seed, progress=False)
    rows = []
    for method, guard in (
        ("plain CFG", "none"),
        ("delayed CFG", DelayedCFGGuard()),
        ("opposite guidance", OppositeGuidanceGuard()),
        ("cpsample + CFG", "cpsample"),
    ):
        started = time.time()
        result = generate_conditional(
            args.conditional_model, labels, guard=guard, classifier=classifier, alpha=ALPHA, scale=SCALE, **common
        )
        rows.append(judge_row(judge, "conditional", method, result.images, time.time() - started, labels=labels))
        print(f"{method}: done", flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    def cell(value, kind):
        if value is None:
            return "-"
        return {"pct": f"{100 * value:.1f}%", "f1": f"{value:.1f}", "f3": f"{value:.3f}"}.get(kind, str(value))

    lines = [
        "| model | method | near-copies | share (95% CI) | FD_digitnet | s/image | class kept | SIDE distinct | "
        "sample-only MIA AUC (TPR@1%FPR) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = f"{cell(r['near_copy_share'], 'pct')} ({cell(r['ci_low'], 'pct')}-{cell(r['ci_high'], 'pct')})"
        mia = (
            "-"
            if r.get("mia_sample_nn_auc") is None
            else f"{cell(r['mia_sample_nn_auc'], 'f3')} ({cell(r['mia_sample_nn_tpr_at_1pct_fpr'], 'pct')})"
        )
        lines.append(
            f"| {r['model']} | {r['method']} | {r['near_copies']}/{r['n']} | {share} | {cell(r['fd_digitnet'], 'f1')} "
            "| "
            f"{cell(r['seconds_per_image'], 'f3')} | {cell(r['class_agreement'], 'pct')} | "
            f"{cell(r['side_distinct_extracted'], '')} | {mia} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
