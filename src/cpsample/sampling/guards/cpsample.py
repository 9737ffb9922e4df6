"""CPSample (classifier-protected sampling): steer away from points a random-label classifier is sure about.

Paper (seed 002) section 3.1 with the App. D fix: for each sample whose p(y=c | x_t, t) < alpha for a label c,
eps <- eps - s * sqrt(1 - abar_t) * grad_x log(tau + p(y=c | x_t, t)), i.e. push towards the unlikely label.
Samples where the classifier is not over-confident are left exactly as they were.
"""

from __future__ import annotations

import torch

from cpsample.models.classifier import TimeClassifier
from cpsample.sampling.guards.base import Guard


class CPSampleGuard(Guard):
    name = "cpsample"

    def __init__(self, classifier: TimeClassifier, alpha: float = 0.001, scale: float = 1000.0, tau: float = 0.001):
        super().__init__()
        if not 0.0 <= alpha <= 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5], got {alpha}")
        if scale < 0 or tau < 0:
            raise ValueError(f"scale and tau must be non-negative, got scale={scale}, tau={tau}")
        self.classifier = classifier.eval().requires_grad_(False)
        self.alpha, self.scale, self.tau = alpha, scale, tau

    def to(self, device, dtype):
        self.classifier.to(device=device)
        if self.classifier.dtype != dtype:  # (a same-dtype .to() makes diffusers print a warning)
            self.classifier.to(dtype=dtype)
        return self

    def settings(self) -> dict:
        return {"guard": self.name, "alpha": self.alpha, "scale": self.scale, "tau": self.tau}

    def adjust(self, eps, x_t, t, abar_t):
        dtype = next(self.classifier.parameters()).dtype
        # The cheap part runs for every sample: is the classifier over-confident? No graph is built here.
        with torch.no_grad():
            probs = self.classifier(x_t.to(dtype), t).float().softmax(dim=-1)
        # Over-confident for label 1 means p(y=0) < alpha: guide towards 0, and vice versa.
        target = (probs[:, 1] < probs[:, 0]).long()  # the less likely label
        fired = probs.gather(1, target[:, None]).squeeze(1) < self.alpha
        self.record(p1=probs[:, 1], fired=fired)
        if not bool(fired.any()):
            return eps
        # The gradient is paid for only by the samples that need it.
        rows = fired.nonzero().squeeze(1)
        with torch.enable_grad():
            x_in = x_t[rows].detach().to(dtype).requires_grad_(True)
            p_target = self.classifier(x_in, t[rows]).float().softmax(dim=-1).gather(1, target[rows, None]).squeeze(1)
            grad = torch.autograd.grad(torch.log(self.tau + p_target).sum(), x_in)[0].to(eps.dtype)
        adjusted = eps.clone()
        adjusted[rows] = eps[rows] - self.scale * (1.0 - abar_t).sqrt().to(eps.dtype) * grad
        return adjusted
