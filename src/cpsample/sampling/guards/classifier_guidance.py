"""Classifier guidance towards a chosen class (Dhariwal & Nichol 2021), the step SIDE uses to extract images.

eps <- eps - s * sqrt(1 - abar_t) * grad_x log p(y = target | x_t, t) for every sample, each with its own target.
This is CPSample's update without the confidence gate and aimed at a class instead of away from one: with a
time-dependent classifier trained on clusters of a model's own samples (SIDE, Chen et al. 2024), it pulls the
trajectory into one memorised mode. Scale 0 leaves sampling exactly as it was.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from cpsample.models.classifier import TimeClassifier
from cpsample.sampling.guards.base import Guard


class ClassifierGuidanceGuard(Guard):
    name = "classifier-guidance"

    def __init__(
        self, classifier: TimeClassifier, target: int | Sequence[int] | torch.Tensor = 0, scale: float = 10.0
    ):
        super().__init__()
        if scale < 0:
            raise ValueError(f"the guidance scale must be non-negative (0 = no guidance), got {scale}")
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_labels = int(classifier.config.num_labels)
        self.scale = float(scale)
        self.set_target(target)

    def set_target(self, target: int | Sequence[int] | torch.Tensor) -> None:
        """One class for the whole batch (int) or one per sample (sequence as long as the next batches)."""
        targets = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        if len(targets) == 0:
            raise ValueError("no target class given")
        bad = targets[(targets < 0) | (targets >= self.num_labels)]
        if len(bad):
            raise ValueError(
                f"target class {int(bad[0])} does not exist: the classifier has {self.num_labels} labels "
                f"(0-{self.num_labels - 1})"
            )
        self.targets = targets

    def settings(self) -> dict:
        shown = self.targets.tolist() if len(self.targets) <= 16 else f"{len(self.targets)} per-sample targets"
        return {"guard": self.name, "scale": self.scale, "target": shown, "num_labels": self.num_labels}

    def to(self, device, dtype):
        self.classifier.to(device=device, dtype=dtype)
        return self

    def adjust(self, eps, x_t, t, abar_t):
        targets = self._targets_for(len(x_t)).to(x_t.device)
        with torch.enable_grad():
            x_in = x_t.detach().to(next(self.classifier.parameters()).dtype).requires_grad_(self.scale > 0)
            log_probs = F.log_softmax(self.classifier(x_in, t).float(), dim=-1)
            log_p_target = log_probs.gather(1, targets[:, None]).squeeze(1)
            self.record(p_target=log_p_target.detach().exp())
            if self.scale == 0:
                return eps  # exactly plain sampling
            grad = torch.autograd.grad(log_p_target.sum(), x_in)[0].to(eps.dtype)
        return eps - self.scale * (1.0 - abar_t).sqrt().to(eps.dtype) * grad

    def _targets_for(self, batch: int) -> torch.Tensor:
        if len(self.targets) == 1:
            return self.targets.expand(batch)
        if len(self.targets) != batch:
            raise ValueError(
                f"{len(self.targets)} per-sample targets set but the batch holds {batch} samples; "
                "call set_target for each batch"
            )
        return self.targets
