"""Compose guards: several strategies act on one sampling run, in a fixed order.

The order is the list order: every member's `correct` runs (member by member), then every member's `adjust`, each
seeing the eps the previous one returned. For an attack on a defended sampler put the attacker first and the defence
last, as it would be when the attacker can only steer the eps it hands to the deployed sampler:
`ChainGuard([ClassifierGuidanceGuard(...), CPSampleGuard(...)])`. CPSample's push depends on x_t alone, so it is the
same whether it is subtracted before or after the attacker's term.

Classifier-free guidance is mixed once per step, so at most one member may change the mixing (declare
`mixes_cfg = True`, as delayed CFG does); every member's `combine` is still called so that members which only
watch the two halves (AMG's despecification) see them. Each member's trace appears under "<name>.<key>".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cpsample.sampling.guards.base import Guard


class ChainGuard(Guard):
    name = "chain"

    def __init__(self, guards: Sequence[Guard]):
        super().__init__()
        guards = list(guards)
        if not guards:
            raise ValueError("ChainGuard needs at least one guard")
        for guard in guards:
            if not isinstance(guard, Guard):
                raise TypeError(f"ChainGuard members must be Guard objects, got {type(guard).__name__}")
        mixers = [guard.name for guard in guards if getattr(guard, "mixes_cfg", False)]
        if len(mixers) > 1:
            raise ValueError(f"only one guard may change classifier-free guidance mixing, got {', '.join(mixers)}")
        self.guards = guards
        self.prefixes = _unique_prefixes(guards)

    # The chain keeps no trace of its own: it is its members' traces, prefixed.
    @property
    def trace(self) -> dict[str, list[np.ndarray]]:
        merged: dict[str, list[np.ndarray]] = {}
        for prefix, guard in zip(getattr(self, "prefixes", []), getattr(self, "guards", [])):
            merged.update({f"{prefix}.{key}": values for key, values in guard.trace.items()})
        return merged

    @trace.setter
    def trace(self, value) -> None:  # Guard.__init__ and reset() assign {}; members keep their own traces
        if value:
            raise AttributeError("a ChainGuard's trace is its members' traces; it cannot be set")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {', '.join(repr(guard) for guard in self.guards)})"

    def reset(self) -> None:
        for guard in self.guards:
            guard.reset()

    def begin_run(self, noise_levels: list[float]) -> None:
        super().begin_run(noise_levels)
        for guard in self.guards:
            guard.begin_run(noise_levels)

    def begin_step(self, index: int, count: int) -> None:
        super().begin_step(index, count)
        for guard in self.guards:
            guard.begin_step(index, count)

    def combine(self, eps_cond, eps_uncond, guidance_scale, t):
        mixed = None
        for guard in self.guards:
            result = guard.combine(eps_cond, eps_uncond, guidance_scale, t)
            if getattr(guard, "mixes_cfg", False):
                mixed = result
        return super().combine(eps_cond, eps_uncond, guidance_scale, t) if mixed is None else mixed

    def correct(self, predictions, x_t, t, abar_t):
        for guard in self.guards:
            predictions = guard.correct(predictions, x_t, t, abar_t)
        return predictions

    def adjust(self, eps, x_t, t, abar_t):
        for guard in self.guards:
            eps = guard.adjust(eps, x_t, t, abar_t)
        return eps

    def record(self, **values: torch.Tensor) -> None:
        raise AttributeError("a ChainGuard records nothing itself; its members record their own traces")

    def settings(self) -> dict:
        return {"guard": self.name, "members": [guard.settings() for guard in self.guards]}

    def to(self, device, dtype):
        for guard in self.guards:
            guard.to(device, dtype)
        return self


def _unique_prefixes(guards: list[Guard]) -> list[str]:
    """Member names, or "<position>:<name>" where two members share a name, so trace keys never collide."""
    names = [guard.name for guard in guards]
    return [name if names.count(name) == 1 else f"{position}:{name}" for position, name in enumerate(names)]
