"""The guidance-strategy interface: one small object that may change eps at each denoising step.

A strategy sees the current noisy batch x_t, the step t, abar_t and the denoiser's eps, and returns the eps to use.
It records what it did per sample and step in `trace` (name -> list of per-step arrays), which samplers save.
"""

from __future__ import annotations

import numpy as np
import torch


class Guard:
    name = "none"

    def __init__(self) -> None:
        self.trace: dict[str, list[np.ndarray]] = {}
        self.step_index, self.num_steps = 0, 0

    def begin_step(self, index: int, count: int) -> None:
        """Told before each denoising step which step of how many it is (for strategies that act only early or late)."""
        self.step_index, self.num_steps = index, count

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, t: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance: how conditional and unconditional eps are mixed. Strategies may override."""
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def reset(self) -> None:
        """Called before each batch; forget the last batch's trace."""
        self.trace = {}

    def record(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.trace.setdefault(key, []).append(value.detach().float().cpu().numpy())

    def adjust(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
        return eps

    def settings(self) -> dict:
        return {"guard": self.name}

    def to(self, device: torch.device, dtype: torch.dtype) -> "Guard":
        return self


class NoGuard(Guard):
    """Plain sampling."""
