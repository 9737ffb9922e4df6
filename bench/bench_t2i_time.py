"""Paired timing on bundled-t2i (issue 40's time target): plain sampling against CPSample with a latent classifier's
calibration (default: the shipped one), alternating in one process, `--captions` training captions x `--per-prompt`
images (one batch per caption), 50 steps, 3 repeats; medians and their ratio.

    OMP_NUM_THREADS=1 python bench/bench_t2i_time.py > bench/results/t2i/paired_time.json
    OMP_NUM_THREADS=1 python bench/bench_t2i_time.py --classifier runs/narrow-clf --captions 5 --per-prompt 24
"""

import argparse
import json
import statistics
import sys
import time

import torch

from cpsample.sampling.adapters import load_adapter
from cpsample.sampling.generate import SampleConfig, generate
from cpsample.sampling.run import own_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default="bundled-t2i")
    parser.add_argument("--captions", type=int, default=30)
    parser.add_argument("--per-prompt", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = own_prompts("bundled-t2i").read_text().splitlines()[: args.captions]
    adapter = load_adapter("bundled-t2i").conditioned(prompts)
    config = SampleConfig(n=args.per_prompt, steps=50, batch_size=args.per_prompt, seed=7, progress=False)
    times = {"plain": [], "cpsample": []}
    for _ in range(args.repeats):
        for name in ("plain", "cpsample"):
            started = time.perf_counter()
            if name == "plain":
                generate(adapter, "none", config)
            else:
                generate(adapter, "cpsample", config, classifier=args.classifier)
            times[name].append(time.perf_counter() - started)
            print(name, round(times[name][-1], 1), file=sys.stderr, flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({**vars(args), "times": times, "median": median, "ratio": median["cpsample"] / median["plain"]}))


if __name__ == "__main__":
    main()
