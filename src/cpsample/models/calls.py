"""Network calls split into CPU-sized pieces."""

from __future__ import annotations

import torch

# On a CPU a network call of many samples costs more per sample than calls of a few dozen: their activations
# outgrow the cache (one thread, 32x32 RGB UNet: 8.5-10.8 ms per sample in calls of 32-64, 13.7-15.3 in calls of 256;
# bench/README, Finding 28). So on a CPU the denoiser is called on at most this many samples at a time; a batch's
# noise, and so its samples, are still drawn per batch. On an accelerator one call is faster. CPSample's check is not
# split: the guard's time over plain's was 8.4 s with it split and 7.6 s without (250 RGB images, 20 steps).
CPU_CALL_SIZE = 64


def in_cpu_calls(network, x: torch.Tensor, *per_sample: torch.Tensor | None) -> torch.Tensor:
    """network(x, *per_sample) for a batch, on a CPU in calls of at most CPU_CALL_SIZE samples (each per-sample
    argument split along; None and 0-d ones passed whole)."""
    if x.device.type != "cpu" or len(x) <= CPU_CALL_SIZE:
        return network(x, *per_sample)

    def part_of(value, part):
        return value if value is None or value.dim() == 0 or len(value) == 1 else value[part]

    parts = []
    for begin in range(0, len(x), CPU_CALL_SIZE):
        part = slice(begin, begin + CPU_CALL_SIZE)
        parts.append(network(x[part], *(part_of(value, part) for value in per_sample)))
    return torch.cat(parts)
