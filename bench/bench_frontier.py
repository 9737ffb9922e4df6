"""The protection / quality frontier: every defence's knob swept on one model, the same seeds, in one run.

For each method (CPSample with each classifier given, AMG, rejection sampling) and each knob setting: near-copy
share (pixel cosine > threshold to the nearest member, exact CI) against FD_digitnet to held-out images, share of
denoising steps guided, and seconds per image. Each method's chosen setting is its best-quality one that cuts
near-copies by >= --reduction relative to plain; there it also reports white-box membership inference (loss attack
and PIA AUC: the adversary holds the weights) and, for CPSample, the time against plain with the calibrated check
window (max_t). Every setting, rejection sampling included, also gets the black-box sample-only attack's AUC and TPR at
1% FPR (mia_sample_nn_*: members vs as many held-out images by distance to the nearest sample; --mia-members of them).

    python bench/bench_frontier.py --out bench_out/frontier                      # the bundled model
    python bench/bench_frontier.py --model runs/ft --classifier paper=runs/clf --out bench_out/frontier_ft

Writes frontier.csv, chosen.csv, frontier.png and cpsample.json into --out.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_methods import judge_row, make_judge, sample_attack

from cpsample.calibration.search import calibrated_settings
from cpsample.evaluation import NearCopyDetector, load_feature_net
from cpsample.evaluation.measures import ClassShares, GuidedShare, Judge
from cpsample.models.bundle import resolve_model_dir, training_data
from cpsample.provenance import seed_everything, write_record
from cpsample.sampling.guards.cpsample import CHECK_EVERY_STEP
from cpsample.sampling.pipeline import generate
from cpsample.sampling.rejection import rejection_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/frontier"))
    parser.add_argument("--model", default="bundled")
    parser.add_argument(
        "--classifier", action="append", default=None, help="NAME=FOLDER (repeatable); default: paper=bundled"
    )
    parser.add_argument("--n-samples", type=int, default=600)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="near-copy cosine threshold (default: the yardstick's for pixels, 0.98)",
    )
    parser.add_argument("--alphas", default="0.001,0.01,0.1")
    parser.add_argument("--scales", default="3,10,30,100")
    parser.add_argument("--amg-scales", default="100,300,1000")
    parser.add_argument("--rejection-thresholds", default="0.99,0.985,0.98")
    parser.add_argument("--reduction", type=float, default=0.9)
    parser.add_argument(
        "--quality-net",
        default="bundled",
        help="feature net for the FD column and class shares ('bundled' digit net, or a train-feature-net folder)",
    )
    parser.add_argument("--mia-members", type=int, default=150, help="0 skips membership inference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", action="store_true", help="only redraw frontier.png from --out's CSVs")
    args = parser.parse_args()
    if args.replot:
        return replot(args.out, f"{args.model}: {args.n_samples} images per setting")
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    classifiers = dict(spec.split("=", 1) for spec in (args.classifier or ["paper=bundled"]))
    dataset, split = training_data(resolve_model_dir(args.model, "denoiser"))
    members, heldout = dataset.images[split.members], dataset.images[split.nonmembers]
    attack = (
        sample_attack(dataset, split, args.threshold, args.seed, args.mia_members) if args.mia_members > 0 else None
    )
    net = load_feature_net(args.quality_net, channels=members.shape[1])
    judges = Judges(
        row=make_judge(NearCopyDetector(members, args.threshold), net, heldout, attack),
        guided=Judge([GuidedShare()]),
        classes=Judge([ClassShares(net)]),  # compared with plain sampling's in `add_class_ratios`
    )
    common = dict(model=args.model, n=args.n_samples, steps=args.steps, seed=args.seed, batch_size=200, progress=False)

    rows = [measure(judges, args, "plain", "-", {"guard": "none"}, common)]
    for name, folder in classifiers.items():
        for alpha in floats(args.alphas):
            for scale in floats(args.scales):
                options = {
                    "guard": "cpsample",
                    "classifier": folder,
                    "alpha": alpha,
                    "scale": scale,
                    "tau": 0.001,
                    "max_t": CHECK_EVERY_STEP,
                }
                rows.append(measure(judges, args, f"cpsample ({name})", f"a={alpha:g} s={scale:g}", options, common))
    for amg_scale in floats(args.amg_scales):
        options = {"guard": "amg", "sim_scale": amg_scale}
        rows.append(measure(judges, args, "amg", f"c3={amg_scale:g}", options, common))
    for threshold in floats(args.rejection_thresholds):
        rows.append(rejection_row(judges, args, members, threshold, common))
    add_class_ratios(rows)
    write_csv(args.out / "frontier.csv", rows)
    chosen = choose_per_method(rows, args.reduction)
    for row in chosen:
        row.update(chosen_extras(row, args, common))
        print(
            f"chosen {row['method']} {row['setting']}: {row['near_copy_share']:.1%} near-copies, FD "
            f"{row['fd_digitnet']:.2f}",
            flush=True,
        )
    write_csv(args.out / "chosen.csv", chosen)
    plot_frontier(rows, chosen, args.out / "frontier.png", title=f"{args.model}: {args.n_samples} images per setting")
    write_record(
        args.out, "bench-frontier", {k: str(v) for k, v in vars(args).items()}, {"rows": rows, "chosen": chosen}
    )


@dataclass
class Judges:
    """Every setting's row (near-copies, FD, time, sample-only attack), the guard's activity (guided settings only)
    and the class shares, each placed where the frontier's columns have always stood."""

    row: Judge
    guided: Judge
    classes: Judge


def measure(judges: Judges, args, method: str, setting: str, options: dict, common: dict) -> dict:
    started = time.time()
    result = generate(**common, **options)
    row = judge_row(
        judges.row,
        args.model,
        method,
        result,
        time.time() - started,
        setting=setting,
        **judges.guided(result),
        options=options,
        **judges.classes(result),
    )
    print(f"{method} {setting}: {row['near_copy_share']:.1%} near-copies, FD {row['fd_digitnet']:.2f}", flush=True)
    return row


def rejection_row(judges: Judges, args, members: np.ndarray, threshold: float, common: dict) -> dict:
    started = time.time()
    result = rejection_sample(
        lambda count, r: generate(**{**common, "n": count, "seed": args.seed + 1000 * r}),
        args.n_samples,
        NearCopyDetector(members, threshold),
    )
    row = judge_row(
        judges.row,
        args.model,
        "rejection",
        result.images,
        time.time() - started,
        setting=f"thr={threshold:g}",
        denoiser_calls_per_image=result.calls_per_image,
        options={"guard": "none", "rejection": threshold},
        **judges.classes(result.images),
    )
    print(
        f"rejection {threshold:g}: {row['near_copy_share']:.1%} near-copies, FD {row['fd_digitnet']:.2f}", flush=True
    )
    return row


def add_class_ratios(rows: list[dict]) -> None:
    """max_class_ratio: the largest factor by which a class's share grew against plain sampling (rows[0])."""

    def smooth(row):
        return (np.asarray(row["class_shares"]) * row["n"] + 1) / (row["n"] + len(row["class_shares"]))

    plain = smooth(rows[0])  # add-one smoothing: a class plain sampling never drew does not divide by zero
    for row in rows:
        row["largest_class_share"] = float(np.max(row["class_shares"]))
        row["max_class_ratio"] = float((smooth(row) / plain).max())


def choose_per_method(rows: list[dict], reduction: float) -> list[dict]:
    """Per method: the best-quality setting with near-copies cut by >= reduction vs plain (else the fewest copies)."""
    plain = rows[0]
    chosen = [dict(plain)]
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        candidates = [r for r in rows if r["method"] == method]
        feasible = [r for r in candidates if r["near_copy_share"] <= (1 - reduction) * plain["near_copy_share"]]
        best = (
            min(feasible, key=lambda r: r["fd_digitnet"])
            if feasible
            else min(candidates, key=lambda r: r["near_copy_share"])
        )
        chosen.append({**best, "meets_reduction": bool(feasible)})
    return chosen


def chosen_extras(row: dict, args, common: dict) -> dict:
    """Membership inference at the chosen setting; for CPSample also the calibrated check window and its time."""
    extras = {}
    options = dict(row["options"])
    if row["method"].startswith("cpsample"):
        knobs = calibrated_settings(
            {"alpha": options["alpha"], "scale": options["scale"], "last_fired_t": row["last_fired_t"]}, tau=0.001
        )
        options["max_t"] = knobs["max_t"]
        extras["max_t"] = knobs["max_t"]
        extras["time_vs_plain_with_max_t"] = timed(options, common) / timed({"guard": "none"}, common)
    if args.mia_members > 0 and "rejection" not in options:
        extras.update(mia_aucs(args, options))
    return extras


def timed(options: dict, common: dict, repeats: int = 2) -> float:
    """Best of `repeats` wall times for 400 images (best-of, because other jobs share the cores)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        generate(**{**common, "n": 400}, **options)
        best = min(best, time.perf_counter() - started)
    return best


def mia_aucs(args, options: dict) -> dict:
    """White box: loss-attack and PIA AUC against the denoiser as the method deploys it (CPSample with its check
    window)."""
    from cpsample.attacks import run_mia
    from cpsample.sampling.guards import GuardContext
    from cpsample.sampling.spec import build_guard

    guard = "none"
    if options["guard"] != "none":
        knobs = {key: value for key, value in options.items() if key not in ("guard", "classifier")}
        context = GuardContext(model=args.model, classifier=options.get("classifier", "bundled"))
        guard = build_guard(options["guard"], context, **knobs)
    results = run_mia(args.model, guard=guard, n_members=args.mia_members, seed=args.seed, progress=False)
    return {f"mia_{name}_auc": round(result.auc, 4) for name, result in results.items()}


def plot_frontier(rows: list[dict], chosen: list[dict], path: Path, title: str) -> None:
    """Every setting as a point; each method's Pareto front (fewest near-copies at a given FD) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = next(key for key in rows[0] if key.startswith("fd_"))  # fd_digitnet, fd_emojinet, ...
    figure, axis = plt.subplots(figsize=(7, 5))
    markers = {"plain": "*", "amg": "s", "rejection": "^"}
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((float(r[fd]), 100 * float(r["near_copy_share"])) for r in rows if r["method"] == method)
        front = [p for i, p in enumerate(points) if all(p[1] < q[1] for q in points[:i])]
        (line,) = axis.plot(
            *zip(*front),
            marker=markers.get(method, "o"),
            markersize=10 if method == "plain" else 5,
            lw=1.2,
            label=method,
        )
        axis.scatter(*zip(*points), marker=markers.get(method, "o"), s=14, color=line.get_color(), alpha=0.4)
    for row in chosen[1:]:
        axis.scatter(float(row[fd]), 100 * float(row["near_copy_share"]), s=150, facecolors="none", edgecolors="black")
    axis.set_xscale("log")
    axis.set_xlabel(
        f"{fd.removesuffix('_pooled').replace('fd_', 'FD_')} to held-out images (log scale; lower = better quality)"
    )
    axis.set_ylabel("near-copies (% of samples)")
    axis.set_title(
        title
        + (
            "\n(lines: each method's Pareto front; circled: its setting that cuts near-copies by 90%)"
            if chosen[1:]
            else "\n(lines: each method's Pareto front)"
        ),
        fontsize=9,
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def replot(out: Path, title: str) -> None:
    """Redraw frontier.png from the CSVs a finished run wrote."""

    def read(name):
        return list(csv.DictReader(open(out / name)))

    plot_frontier(read("frontier.csv"), read("chosen.csv"), out / "frontier.png", title)


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
