"""Does the goal-seeking `calibrate` land the cut where it aims, at less quality cost and time than the grid?
(issue 42)

For one model, each step timed on the same machine and saved as it finishes (a rerun skips what is done):
1. plain sampling of 600 images (`cpsample sample`): the yardstick calibrate's time is stated in;
2. `cpsample calibrate --search seek` and `--search grid`, same goal and seed;
3. plain, each choice and rejection sampling on fresh noise (--seeds, clear of calibrate's 0 and 1000), 600 images
   each, through bench_seeds.py: near-copies, FD, time.

    OMP_NUM_THREADS=1 python bench/bench_calibrate.py --model bundled --out bench/results/calibrate_bundled
    OMP_NUM_THREADS=1 python bench/bench_calibrate.py --model bundled-rgb --out bench/results/calibrate_rgb
    OMP_NUM_THREADS=1 python bench/bench_calibrate.py --model ft --classifier clf --quality-net sknet --out OUT

The third model (issue 42: one the project does not bundle, from a licence-clean set) is the bundled MNIST denoiser
fine-tuned on 150 of the 1,797 sklearn digits (BSD-3, shipped inside scikit-learn), built with
`cpsample train-denoiser --data digits --subset 150 --steps 2000 --init src/cpsample/assets/mnist16/denoiser --out ft
--seed 0`, `cpsample train-feature-net --data digits --name sknet --out sknet` and `cpsample train-classifier --model
ft --steps 6000 --relabel-after 4000 --out clf --seed 0` (about 25 min on one thread).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from cpsample.calibration.search import calibrated_settings
from cpsample.evaluation.nearcopy import resolve_threshold
from cpsample.provenance import write_record
from cpsample.sampling.guards.cpsample import UNCALIBRATED

SEARCHES = ("seek", "grid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--classifier", default=None, help="default: the bundled one of --model's name")
    parser.add_argument("--quality-net", default="bundled", help="as calibrate and bench_seeds.py take it")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reduction", type=float, default=0.95)
    parser.add_argument("--seeds", default="5", help="fresh seeds the choices are measured on")
    parser.add_argument("--n-samples", type=int, default=600, help="images per method and seed in step 3")
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--method", action="append", default=[], help="more methods for step 3, as bench_seeds.py")
    parser.add_argument("--calibrate-n-samples", type=int, default=None, help="calibrate's --n-samples (its default)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.classifier = args.classifier or args.model
    times = _read(args.out / "times.json")
    timed(times, args.out, "plain_600", ["sample", "--model", args.model, "-n", "600", "--out", args.out / "plain"])
    chosen = {}
    for search in args.searches.split(","):
        folder = args.out / search
        command = ["calibrate", "--classifier", args.classifier, "--model", args.model, "--search", search]
        command += ["--quality-net", args.quality_net]
        command += ["--n-samples", str(args.calibrate_n_samples)] if args.calibrate_n_samples else []
        timed(times, args.out, f"calibrate_{search}", [*command, "--reduction", str(args.reduction), "--out", folder])
        run = _read(folder / "calibration_run.json")
        chosen[search] = run.get("chosen")
    methods = ["plain:guard=none"]
    for search, row in chosen.items():
        if row is None:
            print(f"{search}: chose nothing", flush=True)
            continue
        knobs = calibrated_settings(row, UNCALIBRATED["tau"])
        options = ",".join(f"{key}={value}" for key, value in knobs.items() if value is not None)
        methods.append(f"{search}:guard=cpsample,classifier={args.classifier},{options}")
    methods += [*args.method, f"rejection:guard=none,rejection={resolve_threshold(None)}"]
    fresh = [sys.executable, str(Path(__file__).with_name("bench_seeds.py")), "--model", args.model]
    fresh += ["--quality-net", args.quality_net]
    fresh += ["--out", str(args.out / "fresh"), "--seeds", args.seeds, "--n-samples", str(args.n_samples)]
    subprocess.run([*fresh, *(part for method in methods for part in ("--method", method))], check=True)
    summary = summarise(args.out, times, chosen)
    write_record(args.out, "bench-calibrate", {k: str(v) for k, v in vars(args).items()}, summary)


def timed(times: dict, out: Path, name: str, command: list) -> None:
    """Run a cpsample command once (skipped when times.json has it), its wall time kept in times.json."""
    if name in times:
        return
    started = time.time()
    subprocess.run(["cpsample", *map(str, command), "--overwrite"], check=True)
    times[name] = round(time.time() - started, 1)
    (out / "times.json").write_text(json.dumps(times, indent=2))
    print(f"{name}: {times[name]:.0f} s", flush=True)


def summarise(out: Path, times: dict, chosen: dict) -> dict:
    """One table: each method's cut vs plain on the fresh images, its FD change, and each search's time."""
    with open(out / "fresh" / "pooled.csv") as handle:
        pooled = {row["method"]: row for row in csv.DictReader(handle)}
    plain = pooled["plain"]
    fd = next(key for key in plain if key.startswith("fd_") and key.endswith("_pooled"))
    rows = []
    for name, row in pooled.items():
        share, plain_share = float(row["near_copy_share"]), float(plain["near_copy_share"])
        rows.append(
            {
                "method": name,
                "setting": _setting(chosen.get(name)),
                "near_copy_share": round(share, 4),
                "cut": None if name == "plain" else round(1 - share / plain_share, 4),
                fd: round(float(row[fd]), 2),
                "fd_vs_plain": round(float(row[fd]) / float(plain[fd]) - 1, 3),
                "calibrate_seconds": times.get(f"calibrate_{name}"),
                "calibrate_vs_plain_600": round(times[f"calibrate_{name}"] / times["plain_600"], 2)
                if f"calibrate_{name}" in times
                else None,
            }
        )
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row, flush=True)
    return {"rows": rows, "times": times}


def _setting(row: dict | None) -> str:
    if not row:
        return ""
    window = f", max_t {row['max_t']}" if row.get("max_t") is not None else ""
    return f"alpha {row['alpha']:g}, s {row['scale']:g}{window}"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    main()
