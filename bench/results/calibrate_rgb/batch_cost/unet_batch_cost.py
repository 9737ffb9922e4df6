"""Per-sample cost of the UNet and the classifier by call size, one CPU thread: unet_batch_cost.py bundled-rgb"""

import sys
import time

import torch

from cpsample.calibration import Goal, GridSettings, seek

model = sys.argv[1]
s = seek.Seeker(GridSettings(model=model, classifier=model, n_samples=100), Goal())
den = s.adapter.denoiser(None)
clf = s.classifier.model
torch.manual_seed(0)
for rnd in range(2):
    for b in (16, 32, 64, 128, 256):
        x = torch.randn(b, *s.adapter.sample_shape)
        t = torch.full((b,), 500)
        with torch.no_grad():
            den(x, t)
            clf(x, t)
            reps = max(2, 512 // b)
            st = time.perf_counter()
            for _ in range(reps):
                den(x, t)
            el = time.perf_counter() - st
            st = time.perf_counter()
            for _ in range(reps):
                clf(x, t)
            el2 = time.perf_counter() - st
        print(
            f"{model} batch {b}: unet {1000 * el / reps / b:.2f} ms/sample, classifier {1000 * el2 / reps / b:.2f}",
            flush=True,
        )
