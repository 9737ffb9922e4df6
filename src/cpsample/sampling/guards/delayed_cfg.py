"""Delayed classifier-free guidance and opposite guidance (Jain et al. 2024, "CFG inside the attraction basin").

Memorised samples are pulled in by an attraction basin early in denoising, and CFG inside the basin is what
drags the trajectory to the training image. The fix: sample without CFG (scale 0: the unconditional eps) -- or
with *opposite* guidance (a negative scale, which leaves the basin sooner) -- until a transition point, then use
the normal CFG scale for the rest.

Transition point, per sample:
- static, by noise level: early phase while t > transition_t (paper: about 500-650 of 1000 steps). Scheduling
  by noise level rather than step number keeps the switch at the same place for any scheduler and step count;
- static, by step fraction: early phase for the first round(transition_fraction * steps) denoising steps;
- dynamic: switch right after the first local minimum of ||eps_cond - eps_uncond|| (the magnitude falls while
  the trajectory is in the basin and rises once it has left). A static setting given as well acts as the
  latest switch, for samples whose magnitude never turns.
Comparisons are by inequality on the step (never exact equality), the scale is constant within each phase, and
the whole schedule is in the trace: eps_gap, early (True while CFG is withheld or reversed), scale used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cpsample.sampling.guards.base import Guard, GuardOptions, option

PAPER_TRANSITION_T = 600  # middle of the paper's 500-650 range (of 1000 training steps)
OPPOSITE_SCALE = -2.0


@dataclass(frozen=True)
class DelayedCFGOptions(GuardOptions):
    transition_t: int | None = option(
        None, f"Withhold CFG while t > this (default without any setting: {PAPER_TRANSITION_T})."
    )
    transition_fraction: float | None = option(None, "Or: withhold CFG for this fraction of the denoising steps.")
    dynamic: bool = option(False, "Switch after the first local minimum of ||eps_cond - eps_uncond||.")
    early_scale: float = option(0.0, "CFG scale before the transition (0: no guidance).")


@dataclass(frozen=True)
class OppositeGuidanceOptions(DelayedCFGOptions):
    early_scale: float = option(OPPOSITE_SCALE, "CFG scale before the transition (negative: away from the class).")


class DelayedCFGGuard(Guard):
    """CFG at `early_scale` (0: no guidance) before the transition, at the sampler's guidance scale after it."""

    name = "delayed-cfg"
    Options = DelayedCFGOptions
    mixes_cfg = True  # tells ChainGuard this guard decides the CFG mix

    def __init__(
        self,
        transition_t: int | None = None,
        transition_fraction: float | None = None,
        dynamic: bool = False,
        early_scale: float = 0.0,
    ):
        """Without any transition setting the paper's static point applies: t = PAPER_TRANSITION_T."""
        super().__init__()
        if transition_t is not None and transition_fraction is not None:
            raise ValueError(
                "give the transition either as a noise level (transition_t) or as a step fraction "
                "(transition_fraction), not both"
            )
        if transition_t is None and transition_fraction is None and not dynamic:
            transition_t = PAPER_TRANSITION_T
        if transition_t is not None and transition_t < 0:
            raise ValueError(f"transition_t must be a non-negative diffusion step, got {transition_t}")
        if transition_fraction is not None and not 0.0 <= transition_fraction <= 1.0:
            raise ValueError(f"transition_fraction must lie in [0, 1], got {transition_fraction}")
        self.transition_t, self.transition_fraction = transition_t, transition_fraction
        self.dynamic, self.early_scale = dynamic, float(early_scale)
        self._reset_state()

    def _reset_state(self) -> None:
        self._switched: torch.Tensor | None = None  # per sample: has it passed its transition?
        self._last_gap: torch.Tensor | None = None
        self._falling: torch.Tensor | None = None  # per sample: did the gap fall at the last step?
        self._mixed_this_step = False

    def reset(self) -> None:
        super().reset()
        self._reset_state()

    def begin_step(self, index: int, count: int) -> None:
        super().begin_step(index, count)
        self._mixed_this_step = False

    def settings(self) -> dict:
        return {
            "guard": self.name,
            "transition_t": self.transition_t,
            "transition_fraction": self.transition_fraction,
            "dynamic": self.dynamic,
            "early_scale": self.early_scale,
        }

    def combine(self, eps_cond, eps_uncond, guidance_scale, t):
        self._mixed_this_step = True
        gap = (eps_cond - eps_uncond).float().flatten(1).norm(dim=1)
        early = ~self._update_switch(gap, t)
        plain = super().combine(eps_cond, eps_uncond, guidance_scale, t)
        self.record(
            eps_gap=gap, early=early, fired=early, scale=torch.where(early, self.early_scale, float(guidance_scale))
        )
        if not bool(early.any()):
            return plain  # after the transition: exactly the sampler's own CFG
        withheld = eps_uncond + self.early_scale * (eps_cond - eps_uncond)
        return torch.where(early[:, None, None, None], withheld, plain)

    def adjust(self, eps, x_t, t, abar_t):
        if not self._mixed_this_step:
            raise ValueError(
                f"{self.name} changes classifier-free guidance, but this model was not sampled with CFG; "
                "use a class-conditional model (cpsample sample --model MODEL --classes ...)"
            )
        return eps

    def _update_switch(self, gap: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per sample, whether normal CFG applies at this step (the switch is one-way)."""
        if self._switched is None or len(self._switched) != len(gap):
            self._switched = torch.zeros(len(gap), dtype=torch.bool, device=gap.device)
        switched = self._switched | self._static_switch(t)
        if self.dynamic:
            switched = switched | self._passed_local_minimum(gap)
        self._switched = switched
        return switched

    def _static_switch(self, t: torch.Tensor) -> torch.Tensor:
        if self.transition_t is not None:
            return t.to(torch.long) <= self.transition_t
        if self.transition_fraction is not None:
            first_cfg_step = int(round(self.transition_fraction * self.num_steps))
            return torch.full(t.shape, self.step_index >= first_cfg_step, dtype=torch.bool, device=t.device)
        return torch.zeros(t.shape, dtype=torch.bool, device=t.device)

    def _passed_local_minimum(self, gap: torch.Tensor) -> torch.Tensor:
        """True where the gap fell at the previous step and rises now: the previous step was a local minimum."""
        if self._last_gap is None or len(self._last_gap) != len(gap):
            self._last_gap, self._falling = gap, torch.zeros_like(gap, dtype=torch.bool)
            return torch.zeros_like(gap, dtype=torch.bool)
        rising = gap > self._last_gap
        passed = self._falling & rising
        self._falling, self._last_gap = gap < self._last_gap, gap
        return passed


class OppositeGuidanceGuard(DelayedCFGGuard):
    """Delayed CFG whose early phase guides *away* from the condition (negative scale) to leave the basin sooner."""

    name = "opposite-cfg"
    Options = OppositeGuidanceOptions

    def __init__(
        self,
        transition_t: int | None = None,
        transition_fraction: float | None = None,
        dynamic: bool = False,
        early_scale: float = OPPOSITE_SCALE,
    ):
        if early_scale >= 0:
            raise ValueError(
                f"opposite guidance needs a negative early scale, got {early_scale}; "
                "use delayed-cfg for scale 0 (no guidance)"
            )
        super().__init__(transition_t, transition_fraction, dynamic, early_scale)


def transition_steps(trace: dict[str, np.ndarray]) -> np.ndarray:
    """Per sample, the first step index with normal CFG (= number of steps if it never switched), from a trace."""
    early = np.asarray(trace["early"], dtype=bool)  # (steps, N)
    steps = len(early)
    switched = ~early
    return np.where(switched.any(axis=0), switched.argmax(axis=0), steps)
