"""Time two versions of CPSample's guard on the same recorded run, without the UNet (bench/README.md, Finding 25).

One run is sampled with the guard of this checkout, recording every call to the guard (x_t, eps, t, abar_t); then
the guard's calls alone are replayed, interleaved, with this checkout's CPSampleGuard and with the CPSampleGuard
class of another copy of sampling/guards/cpsample.py (--against; e.g. this file with a patch applied), stage for
stage. It says whether the corrected eps of every call are bit-identical, and the median guard time of each, with
the median of the paired ratios. A guard's time is a few seconds against 20 of UNet, so this sees differences of a
few per cent that an end-to-end run (profile_guard.py) drowns in the machine's drift.

    git show HEAD:src/cpsample/sampling/guards/cpsample.py > /tmp/head_cpsample.py   # or a patched copy
    OMP_NUM_THREADS=1 python bench/replay_guard.py --default --against /tmp/head_cpsample.py
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from profile_guard import add_guard_arguments, chosen_spec

import cpsample.sampling.sampler as sampler_module
from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="another copy of sampling/guards/cpsample.py")
    add_guard_arguments(parser)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the numbers")
    args = parser.parse_args()
    adapter = load_adapter(args.model)
    spec = chosen_spec(args)
    guard = adapter.guard(spec, args.classifier)
    batches = record(adapter, guard, args.n_samples)
    other = copy.deepcopy(guard)
    for stage in getattr(other, "guards", [other]):
        stage.__class__ = guard_class(args.against)
        stage.reset()
    versions = {"this checkout": guard, str(args.against): other}
    identical = all(torch.equal(a, b) for a, b in zip(*(replay(g, batches, keep=True) for g in versions.values())))
    seconds = {name: [] for name in versions}
    for repeat in range(args.repeats):
        for name in list(versions)[:: 1 if repeat % 2 == 0 else -1]:
            started = time.perf_counter()
            replay(versions[name], batches)
            seconds[name].append(time.perf_counter() - started)
    ours, theirs = seconds.values()
    report = {
        "eps_bit_identical": identical,
        "median_seconds": {name: statistics.median(times) for name, times in seconds.items()},
        "paired_ratio_against_over_this": statistics.median(b / a for a, b in zip(ours, theirs)),
        "seconds": seconds,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        settings = vars(args) | {"out": str(args.out), "against": str(args.against), "guard": str(spec)}
        args.out.write_text(json.dumps({"settings": settings, **report}, indent=2))


def record(adapter, guard, n: int) -> list:
    """Sample n images, keeping every guard call: [(noise levels, [(step, steps, x_t, eps, t, abar_t), ...])]."""
    batches = []
    guided = sampler_module.guided_eps

    def recording(guard, prediction, x_t, t, abar_t):
        if guard.step_index == 0:
            batches.append((guard.noise_levels, []))
        batches[-1][1].append((guard.step_index, guard.num_steps, x_t.clone(), prediction.clone(), t, abar_t))
        return guided(guard, prediction, x_t, t, abar_t)

    sampler_module.guided_eps = recording
    try:
        generate(adapter, guard, SampleConfig(n=n, progress=False))
    finally:
        sampler_module.guided_eps = guided
    return batches


def replay(guard, batches: list, keep: bool = False) -> list:
    corrected = []
    for levels, calls in batches:
        guard.reset()
        guard.begin_run(levels)
        for step, steps, x_t, eps, t, abar_t in calls:
            guard.begin_step(step, steps)
            (eps,) = guard.correct((eps,), x_t, t, abar_t)
            if keep:
                corrected.append(eps)
    return corrected


def guard_class(path: Path) -> type:
    """CPSampleGuard as defined in another copy of cpsample.py (it imports the rest from this checkout)."""
    name = "replayed_cpsample_guard"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.CPSampleGuard


if __name__ == "__main__":
    main()
