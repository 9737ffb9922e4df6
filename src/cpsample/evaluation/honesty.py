"""Say it loudly when protection did not happen: a classifier that never fit its members, a guard that never fired,
a cut measured against a baseline that made no near-copies. Each check returns a warning (None when all is well);
commands print them, `calibrate` refuses to save on a vacuous comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The paper's fit: the classifier's mean loss at low noise levels below this (training/classifier.PAPER_LOSS).
FIT_LOSS = 0.05


def unfit_classifier(classifier_dir: str | Path | None) -> str | None:
    """The classifier's training record says it did not fit its members' random labels."""
    if classifier_dir is None:
        return None
    try:
        results = json.loads((Path(classifier_dir) / "cpsample.json").read_text())["results"]
        loss, reached = float(results["low_noise_loss"]), bool(results["reached_paper_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no training record (a classifier from elsewhere): nothing to say
    if reached:
        return None
    return (
        f"{classifier_dir}: the classifier did not fit its members' labels (low-noise loss {loss:.3f}; a fit is < "
        f"{FIT_LOSS}): it cannot tell members from other images, so its guard protects little. Train it longer "
        "(--steps) or wider (--channels) with `cpsample train-classifier --resume`"
    )


def idle_guard(trace: dict, guard: str) -> str | None:
    """The guard recorded whether it fired, and it never did: the samples are plain samples."""
    fired = trace.get("fired")
    if fired is None or np.asarray(fired).size == 0 or bool(np.asarray(fired).any()):
        return None
    steps, samples = np.asarray(fired).shape
    return (
        f"the guard ({guard}) never fired on any of the {samples} samples at any of the {steps} steps: these are "
        "plain samples, nothing was protected. Its classifier was never over-confident (check that it fits the "
        "model's members) or alpha is too small; `cpsample calibrate` chooses alpha and the scale for this model"
    )


def vacuous_baseline(name: str, copies: int, n: int) -> str | None:
    """A cut measured against a baseline with no near-copies says nothing about protection."""
    if copies > 0:
        return None
    return (
        f"{name} made 0 near-copies of {n} images: any defence 'cuts' them by 100%, so no cut measured against it "
        "means anything. Check that the model copies at all, sample more images, or use a stricter yardstick "
        "(--threshold, or --features dino:PATH)"
    )


def protection_warnings(trace: dict, guard: str, classifier: str | Path | None) -> list[str]:
    """What a guarded sampling run should say loudly: its classifier never fit, or its guard never fired.
    guard: the guard's name (`settings()["guard"]`); classifier: its classifier, None for a guard without one."""
    from cpsample.models.bundle import resolve_model_dir

    if not trace:  # plain sampling records no trace: nothing was asked of a guard
        return []
    folder = None
    if classifier is not None:
        try:
            folder = resolve_model_dir(classifier, "classifier")
        except (FileNotFoundError, ValueError):
            folder = None
    return [warning for warning in (unfit_classifier(folder), idle_guard(trace, guard)) if warning]
