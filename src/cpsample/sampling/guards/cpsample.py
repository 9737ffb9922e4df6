"""CPSample (classifier-protected sampling): steer away from points a random-label classifier is sure about.

Paper (seed 002) section 3.1 with the App. D fix: for each sample whose p(y=c | x_t, t) < alpha for a label c,
eps <- eps - s * sqrt(1 - abar_t) * grad_x log(tau + p(y=c | x_t, t)), i.e. push towards the unlikely label.
Samples where the classifier is not over-confident are left exactly as they were.

Its knobs travel with the classifier: `cpsample calibrate` writes them to calibration.json in the classifier's
folder, and `cpsample_settings` reads them back for every command that guards with that classifier.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from cpsample.models.classifier import TimeClassifier
from cpsample.sampling.guards.base import Guard


CALIBRATION_FILE = "calibration.json"
# For a classifier nobody calibrated: the paper's LSUN Church setting (said once per classifier when used).
UNCALIBRATED = {"alpha": 0.1, "scale": 10.0, "tau": 0.001, "max_t": None}
_told_uncalibrated: set[str] = set()
CHECK_EVERY_STEP = 10**9  # a max_t above every timestep: the paper's rule, whatever a calibration says


class CPSampleGuard(Guard):
    name = "cpsample"

    def __init__(self, classifier: TimeClassifier, alpha: float = UNCALIBRATED["alpha"],
                 scale: float = UNCALIBRATED["scale"], tau: float = UNCALIBRATED["tau"], max_t: int | None = None):
        """max_t: check the classifier only at timesteps t <= max_t (None: every step, the paper's rule). Above the
        highest t at which a classifier can be over-confident, the check costs time and never fires."""
        super().__init__()
        if not 0.0 <= alpha <= 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5], got {alpha}")
        if scale < 0 or tau < 0:
            raise ValueError(f"scale and tau must be non-negative, got scale={scale}, tau={tau}")
        if max_t is not None and max_t < 0:
            raise ValueError(f"max_t must be a timestep >= 0 or None, got {max_t}")
        self.classifier = classifier.eval().requires_grad_(False)
        self.alpha, self.scale, self.tau, self.max_t = alpha, scale, tau, max_t

    def to(self, device, dtype):
        self.classifier.to(device=device)
        if self.classifier.dtype != dtype:  # (a same-dtype .to() makes diffusers print a warning)
            self.classifier.to(dtype=dtype)
        return self

    def settings(self) -> dict:
        return {"guard": self.name, "alpha": self.alpha, "scale": self.scale, "tau": self.tau, "max_t": self.max_t}

    def adjust(self, eps, x_t, t, abar_t):
        if self.max_t is not None and int(t.max()) > self.max_t:
            self.record(p1=torch.full((len(x_t),), math.nan), fired=torch.zeros(len(x_t), dtype=torch.bool))
            return eps
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


def cpsample_settings(classifier_dir: str | Path | None, alpha: float | None = None, scale: float | None = None,
                      tau: float | None = None, max_t: int | None = None) -> dict:
    """The knobs to guard with: those given, the rest from the classifier's calibration.json, else UNCALIBRATED.

    A calibrated max_t belongs to its alpha: with another alpha given, every step is checked (unless max_t is given).
    """
    calibrated = read_calibration(classifier_dir)
    base = UNCALIBRATED if calibrated is None else {**UNCALIBRATED, **calibrated["settings"]}
    if calibrated is None and None in (alpha, scale, tau) and str(classifier_dir) not in _told_uncalibrated:
        _told_uncalibrated.add(str(classifier_dir))
        print(f"note: {classifier_dir} has no {CALIBRATION_FILE}; CPSample uses alpha {base['alpha']:g}, scale "
              f"{base['scale']:g}, tau {base['tau']:g} where not given. Run `cpsample calibrate --classifier "
              f"{classifier_dir}` to choose them for this model.", file=sys.stderr)
    chosen = {"alpha": base["alpha"] if alpha is None else alpha, "scale": base["scale"] if scale is None else scale,
              "tau": base["tau"] if tau is None else tau}
    same_alpha = alpha is None or alpha == base["alpha"]
    chosen["max_t"] = max_t if max_t is not None else (base.get("max_t") if same_alpha else None)
    return chosen


def read_calibration(classifier_dir: str | Path | None) -> dict | None:
    """The classifier folder's calibration.json ({"settings": {...}, "measured": {...}, ...}), or None."""
    if classifier_dir is None:
        return None
    path = Path(classifier_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        settings = record["settings"]
        if not {"alpha", "scale", "tau"} <= set(settings):
            raise KeyError("alpha, scale and tau")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a cpsample calibration ({error}); rerun `cpsample calibrate` or delete it") from None
    return record


def write_calibration(classifier_dir: str | Path, settings: dict, details: dict) -> Path:
    path = Path(classifier_dir) / CALIBRATION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, **details}, indent=2, default=str))
    tmp.replace(path)
    return path
