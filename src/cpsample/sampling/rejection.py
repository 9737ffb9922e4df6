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
    leftover: int = 0  # near-copies still among the images when the rounds ran out (rejection_per_prompt)

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


def rejection_per_prompt(adapter, config, first: SampleResult, is_near_copy: NearCopyTest, max_rounds: int):
    """Rejection sampling for prompted images (a LatentAdapter conditioned on its prompts, `first` its plain round
    with `config`): every near-copy is drawn again for the same prompt with fresh noise (seed + 1000 * round) until
    none is left or max_rounds redraws have passed. A memorised caption returns its member from almost any noise, so
    copies can be left at the end: they stay in the images (and count as copies), and `leftover` says how many.

    Returns a RejectionResult whose denoiser_calls include the first round and every redraw (each redraw samples
    config.n images for a prompt that still has a copy, and keeps what replaces the copies)."""
    from cpsample.sampling.generate import generate

    started = time.time()
    prompt_index = np.asarray(first.prompt_index)
    images, calls = torch.as_tensor(first.images).clone(), first.denoiser_calls
    copies = np.asarray(is_near_copy(images), dtype=bool)
    drawn, rejected, rounds = len(images), 0, 0
    while copies.any() and rounds < max_rounds:
        rounds += 1
        rejected += int(copies.sum())  # thrown away, each replaced by this round's draw for its slot
        redo = sorted({int(prompt_index[i]) for i in np.flatnonzero(copies)})
        redraw = type(config)(**{**config.__dict__, "seed": config.seed + 1000 * rounds, "progress": False})
        again = generate(adapter.conditioned([adapter.prompts[p] for p in redo]), "none", redraw)
        calls += again.denoiser_calls
        drawn += len(again.images)
        fresh, fresh_index = torch.as_tensor(again.images), np.asarray(again.prompt_index)
        for index in np.flatnonzero(copies):
            prompt = int(prompt_index[index])
            rank = list(np.flatnonzero(prompt_index == prompt)).index(index)  # its slot among the prompt's images
            images[index] = fresh[np.flatnonzero(fresh_index == redo.index(prompt))[rank]]
        copies = np.asarray(is_near_copy(images), dtype=bool)
    seconds = first.seconds + time.time() - started
    return RejectionResult(images, calls, seconds, drawn, rejected, rounds, leftover=int(copies.sum()))
