"""Rejection sampling, the baseline CPSample is compared with: draw, throw away near-copies, draw again.

It needs the training set at sampling time (to detect copies) and pays for every rejected image with a full
trajectory; the result records both so the cost per accepted image can be compared with CPSample's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cpsample.sampling.sampler import SampleResult

# draw(count, round_index) -> SampleResult (each round must use fresh noise);
# is_near_copy(images) -> bool array, True where an image copies training data (the demo passes
# evaluation.NearCopyDetector, i.e. the evaluation's one near-copy yardstick).
Draw = Callable[[int, int], SampleResult]
NearCopyTest = Callable[[torch.Tensor], np.ndarray]


@dataclass
class RejectionResult:
    images: torch.Tensor
    denoiser_calls: int
    seconds: float
    drawn: int
    rejected: int
    rounds: int

    @property
    def calls_per_image(self) -> float:
        return self.denoiser_calls / max(len(self.images), 1)


def rejection_sample(draw: Draw, n: int, is_near_copy: NearCopyTest, max_rounds: int = 20) -> RejectionResult:
    """Keep drawing fresh images until n are accepted; fail loudly if that never happens."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    started = time.time()
    kept: list[torch.Tensor] = []
    calls = drawn = rejected = 0
    for round_index in range(max_rounds):
        missing = n - sum(len(k) for k in kept)
        if missing <= 0:
            break
        result = draw(missing, round_index)
        copies = np.asarray(is_near_copy(result.images), dtype=bool)
        kept.append(result.images[torch.from_numpy(~copies)])
        calls += result.denoiser_calls
        drawn += len(result.images)
        rejected += int(copies.sum())
    else:
        round_index = max_rounds
    images = torch.cat(kept)[:n] if kept else torch.empty(0)
    if len(images) < n:
        raise RuntimeError(
            f"rejection sampling accepted only {len(images)} of {n} images in {max_rounds} rounds "
            f"({rejected} of {drawn} drawn were near-copies); raise max_rounds or lower the threshold's strictness"
        )
    return RejectionResult(images, calls, time.time() - started, drawn, rejected, round_index)
