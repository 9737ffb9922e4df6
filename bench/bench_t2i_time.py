"""Paired timing on bundled-t2i (issue 40's time target): plain sampling against the shipped calibration, alternating
in one process, 30 training captions x 6 images, 50 steps, 3 repeats; medians and their ratio.

    OMP_NUM_THREADS=1 python bench/bench_t2i_time.py > bench/results/t2i/paired_time.json
"""

import json
import statistics
import sys
import time

import torch

from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.run import own_prompts

torch.set_num_threads(1)
prompts = own_prompts("bundled-t2i").read_text().splitlines()[:30]
adapter = load_adapter("bundled-t2i").conditioned(prompts)
config = SampleConfig(n=6, steps=50, batch_size=6, seed=7, progress=False)
times = {"plain": [], "cpsample": []}
for repeat in range(3):
    for name in ("plain", "cpsample"):
        started = time.perf_counter()
        if name == "plain":
            generate(adapter, "none", config)
        else:
            generate(adapter, "cpsample", config, classifier="bundled-t2i")
        times[name].append(time.perf_counter() - started)
        print(name, round(times[name][-1], 1), file=sys.stderr, flush=True)
med = {k: statistics.median(v) for k, v in times.items()}
print(json.dumps({"times": times, "median": med, "ratio": med["cpsample"] / med["plain"]}))
