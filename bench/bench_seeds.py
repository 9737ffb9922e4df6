"""Is a difference between defences real or seed noise? Each method at one setting, several seeds, paired.

FD over 600 images moves by several points between seeds (plain sampling, seed 0 vs 1: 5.5 vs 9.9), so a single
frontier run cannot rank methods a few FD points apart. This runs every method on the same noise for each seed,
reports near-copy share and FD per seed, FD pooled over all seeds, and each method's paired FD difference against
the others (mean and standard error over seeds).

    python bench/bench_seeds.py --seeds 0,1,2 --out bench_out/seeds
    python bench/bench_seeds.py --method "small:guard=cpsample,classifier=runs/clf_small" --out bench_out/seeds

A method is NAME:KEY=VALUE,... (options of `generate`; `rejection=0.98` makes it rejection sampling). Each
(method, seed) is saved as it finishes and skipped when the run is restarted with the same --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from bench_frontier import write_csv

from cpsample.evaluation import NearCopyDetector, load_feature_net
from cpsample.evaluation.measures import ClassSkew, FrechetDistance, Judge, NearCopyShare
from cpsample.models.allocator import keep_freed_memory
from cpsample.models.pretrained import DiffusionModel
from cpsample.provenance import write_record
from cpsample.sampling.pipeline import generate
from cpsample.sampling.rejection import rejection_sample

DEFAULT_METHODS = (
    "plain:guard=none",
    "cpsample:guard=cpsample",
    "amg:guard=amg,sim_scale=1000",
    "rejection:guard=none,rejection=0.98",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out/seeds"))
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--method", action="append", default=None, help="NAME:KEY=VALUE,... (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-samples", type=int, default=600)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--quality-net",
        default="bundled",
        help="feature net for FD: 'bundled' (MNIST digitnet for grey, emojinet for RGB) or a "
        "`cpsample train-feature-net` folder",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the CLI does (models/allocator.py), so times compare with its
    args.out.mkdir(parents=True, exist_ok=True)
    methods = dict(parse_method(spec) for spec in (args.method or DEFAULT_METHODS))
    seeds = [int(part) for part in args.seeds.split(",") if part]
    model = DiffusionModel.from_pretrained(args.model)
    net = load_feature_net(args.quality_net, channels=model.members.images.shape[1])  # 'bundled': digitnet or emojinet
    judge = make_judge(NearCopyDetector(model.members.images), net, model.nonmembers.images)
    images = {
        (name, seed): samples(model, args, name, options, seed) for seed in seeds for name, options in methods.items()
    }
    rows = per_seed_rows(judge, images, fd_column(net))
    pooled = pooled_rows(judge, net, images, methods, seeds)
    add_times(pooled, args.out, seeds)
    paired = paired_rows(rows, list(methods), fd_column(net))
    for name, rows_ in (("per_seed.csv", rows), ("pooled.csv", pooled), ("paired_fd.csv", paired)):
        write_csv(args.out / name, rows_)
    print_summary(pooled, paired, fd_column(net))
    write_record(
        args.out,
        "bench-seeds",
        {k: str(v) for k, v in vars(args).items()},
        {"methods": methods, "pooled": pooled, "paired": paired},
    )


def parse_method(spec: str) -> tuple[str, dict]:
    name, _, options = spec.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        parsed[key] = _value(value)
    return name, parsed


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def samples(model, args, name: str, options: dict, seed: int) -> np.ndarray:
    """The method's images for one seed, read back when an earlier run saved them."""
    path = args.out / f"{name}_seed{seed}.npz"
    if path.exists():
        return np.load(path)["images"]
    common = dict(n=args.n_samples, steps=args.steps, seed=seed, batch_size=200, progress=False)
    options = dict(options)
    threshold = options.pop("rejection", None)
    started = time.time()
    if threshold is None:
        images = generate(model, **common, **options).images.numpy()
    else:

        def draw(count, round_):
            return generate(model, **{**common, "n": count, "seed": seed + 1000 * round_}, **options)

        images = rejection_sample(draw, args.n_samples, NearCopyDetector(model.members.images, threshold)).images
        images = np.asarray(images)
    np.savez_compressed(path, images=images, seconds=time.time() - started)
    print(f"{name} seed {seed}: {time.time() - started:.0f} s", flush=True)
    return images


def make_judge(detector: NearCopyDetector, net, heldout: np.ndarray) -> Judge:
    """Near-copies and FD to the held-out images (fitted once) in the feature net's space."""
    return Judge([NearCopyShare(detector), FrechetDistance(net, heldout, column=fd_column(net))])


def fd_column(net) -> str:
    """FD_digitnet with the bundled MNIST net, FD_sknet with one trained on sklearn digits, ..."""
    return f"fd_{net.config.name}"


def per_seed_rows(judge: Judge, images: dict, fd: str) -> list[dict]:
    return [
        {"method": name, "seed": seed, **_columns(judge(batch), "n", "near_copy_share", fd)}
        for (name, seed), batch in images.items()
    ]


def pooled_rows(judge: Judge, net, images: dict, methods: dict, seeds: list[int]) -> list[dict]:
    batches = {name: np.concatenate([images[(name, seed)] for seed in seeds]) for name in methods}
    # the balance test: no digit class above 1.5x its share under the first method (plain)
    skew = Judge([ClassSkew(net, baseline_images=next(iter(batches.values())))])
    rows = []
    for name, batch in batches.items():
        measured = judge(batch)
        rows.append(
            {
                "method": name,
                **_columns(measured, "n", "near_copy_share", "ci_low", "ci_high"),
                f"{fd_column(net)}_pooled": measured[fd_column(net)],
                **skew(batch),
                "options": json.dumps(methods[name]),
            }
        )
    return rows


def _columns(row: dict, *names: str) -> dict:
    return {name: row[name] for name in names}


def add_times(pooled: list[dict], out: Path, seeds: list[int]) -> None:
    """Seconds per method over all seeds (as each run measured them), and the ratio to the first method's."""
    for row in pooled:
        row["seconds"] = round(
            sum(float(np.load(out / f"{row['method']}_seed{seed}.npz")["seconds"]) for seed in seeds), 1
        )
    for row in pooled:
        row["time_vs_first"] = round(row["seconds"] / max(pooled[0]["seconds"], 1e-9), 3)


def paired_rows(rows: list[dict], names: list[str], column: str) -> list[dict]:
    """FD(a) - FD(b) per seed (same noise), its mean and standard error over seeds."""
    fd = {(row["method"], row["seed"]): row[column] for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    paired = []
    for a, b in itertools.combinations(names, 2):
        diffs = np.array([fd[(a, seed)] - fd[(b, seed)] for seed in seeds])
        stderr = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
        paired.append(
            {
                "a": a,
                "b": b,
                "mean_fd_difference": float(diffs.mean()),
                "stderr": stderr,
                "per_seed": json.dumps(diffs.round(2).tolist()),
            }
        )
    return paired


def print_summary(pooled: list[dict], paired: list[dict], column: str) -> None:
    for row in pooled:
        print(
            f"{row['method']:>12}: {row['near_copy_share']:.1%} near-copies [{row['ci_low']:.1%}, "
            f"{row['ci_high']:.1%}], "
            f"FD pooled {row[column + '_pooled']:.2f}, largest class {row['largest_class_share']:.1%} "
            f"({row['largest_class_ratio_vs_first']:.2f}x its share under {pooled[0]['method']}), "
            f"time {row['time_vs_first']:.2f}x"
        )
    for row in paired:
        print(
            f"FD {row['a']} - {row['b']}: {row['mean_fd_difference']:+.2f} +- {row['stderr']:.2f} (per seed "
            f"{row['per_seed']})"
        )


if __name__ == "__main__":
    main()
