"""The RGB classifier's check of 100 samples in float32 and under bfloat16 autocast, in one call and in calls of 25
(ms, medians of 30; Finding 29). Usage: OMP_NUM_THREADS=1 python classifier_bf16.py"""

import time

import torch

from cpsample.models.allocator import keep_freed_memory
from cpsample.models.classifier import load_classifier

keep_freed_memory()
classifier = load_classifier("/tmp/rgbclf", "cpu").eval()
x, t = torch.randn(100, 3, 32, 32), torch.full((100,), 500)


def median_ms(bf16: bool, size: int = 100, repeats: int = 30) -> float:
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(repeats):
            started = time.perf_counter()
            for begin in range(0, 100, size):
                classifier(x[begin : begin + size], t[begin : begin + size])
            times.append(time.perf_counter() - started)
    return sorted(times)[repeats // 2] * 1000


for _ in range(2):
    print(
        f"fp32 {median_ms(False):.1f} ms  bf16 {median_ms(True):.1f} ms  "
        f"fp32 calls of 25: {median_ms(False, 25):.1f}  bf16 calls of 25: {median_ms(True, 25):.1f}"
    )
