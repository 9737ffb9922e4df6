"""Measures of a set of samples, and the Judge that turns one sample result into one row of them.

After torchmetrics' Metric / MetricCollection: a measure is fitted once on the reference data it needs (the members'
near-copy features, the held-out images' Gaussian fit for FD, the attack's candidates) and is then called on each
sample result, giving its columns; a Judge holds a list of measures and makes one row per result. calibrate's grid,
the demo, `evaluate` and the benchmarks all measure through these classes, so a column means the same everywhere.

    judge = Judge.from_reference(Reference(detector=NearCopyDetector(members), net=net, heldout=heldout),
                                 ("near_copy_share", "guided_share", "frechet_distance", "time"))
    rows = [{"setting": name, **judge(result)} for name, result in results.items()]
    judge.relate(rows)                       # columns against the first row (plain sampling): time_vs_plain

A new measure is one class (a `name`, `from_reference`, `__call__`; `pool` when its columns add up over rounds,
`relate` when a column compares with the first row) and one line in MEASURES.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from cpsample.evaluation.quality import frechet_distance_from_fits, gaussian_fit
from cpsample.evaluation.replication import clopper_pearson


@dataclass(frozen=True)
class Samples:
    """One sample result as measures read it: the images (N, C, H, W) and what sampling recorded beside them."""

    images: np.ndarray
    trace: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (steps, N), e.g. "fired"
    timesteps: np.ndarray | None = None
    seconds: float | None = None
    denoiser_calls: int | None = None
    labels: np.ndarray | None = None  # the class each sample was asked for (class-conditional sampling)

    @classmethod
    def of(cls, result, seconds: float | None = None, labels: np.ndarray | None = None) -> Samples:
        """A SampleResult, LatentSampleResult, RejectionResult, Samples or bare images (array or tensor); `seconds`
        and `labels`, when given, replace what the result holds (a caller that timed the run itself)."""
        if isinstance(result, Samples):
            found = result
        elif hasattr(result, "images"):
            found = cls(
                images=_as_array(result.images),
                trace=getattr(result, "trace", None) or {},
                timesteps=getattr(result, "timesteps", None),
                seconds=getattr(result, "seconds", None),
                denoiser_calls=getattr(result, "denoiser_calls", None),
            )
        else:  # bare images (an array's or a tensor's own `trace` is a method, not a guard's record)
            found = cls(images=_as_array(result))
        given = {"seconds": seconds, "labels": labels}
        return dataclasses.replace(found, **{key: value for key, value in given.items() if value is not None})


def _as_array(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor
        return images.detach().float().cpu().numpy()
    return np.asarray(images)


@runtime_checkable
class Measure(Protocol):
    """One or more columns of a sample result. Optional, looked up by the Judge: `pool(earlier, later)` (a static
    method: the columns of one setting measured in two rounds) and `relate(row, first)` (columns against the first
    row). A registered class also builds itself from a Reference (`from_reference`)."""

    name: str

    def __call__(self, samples: Samples) -> dict[str, Any]: ...


@dataclass
class Reference:
    """The data measures are fitted on, gathered once per run; each measure takes what it needs of it."""

    detector: Callable[[np.ndarray], np.ndarray] | None = None  # images -> near-copy mask (NearCopyDetector, ...)
    net: Any = None  # a FeatureNet: FD's feature space and the class predictions
    heldout: np.ndarray | None = None  # real images FD is measured against
    attack: Callable | None = None  # the sample-only membership attack (attacks.SampleNNAttack)


def _required(value, what: str, measure: type):
    if value is None:
        raise ValueError(f"the {measure.name} measure needs {what}")
    return value


class NearCopyShare:
    """Near-copies of the members: how many, their share and its exact (Clopper-Pearson) 95% interval."""

    name = "near_copy_share"

    def __init__(self, detector: Callable[[np.ndarray], np.ndarray]):
        self.detector = detector  # images -> one bool per image (fitted on the members once, e.g. NearCopyDetector)

    @classmethod
    def from_reference(cls, reference: Reference) -> NearCopyShare:
        return cls(_required(reference.detector, "a near-copy detector", cls))

    def __call__(self, samples: Samples) -> dict:
        copies = np.asarray(self.detector(samples.images))
        return self.columns(int(copies.sum()), len(copies))

    @staticmethod
    def columns(count: int, n: int) -> dict:
        low, high = clopper_pearson(count, n)
        return {"n": n, "near_copies": count, "near_copy_share": count / n, "ci_low": low, "ci_high": high}

    @staticmethod
    def pool(earlier: dict, later: dict) -> dict:
        """Near-copies are counted over both rounds."""
        return NearCopyShare.columns(earlier["near_copies"] + later["near_copies"], earlier["n"] + later["n"])


class FrechetDistance:
    """Frechet distance to real images in a feature net's space. The real images' Gaussian fit is made once, here, not
    on every call. Without a net (a Stable Diffusion pipeline has no held-out images) the column is there, empty."""

    name = "frechet_distance"

    def __init__(self, net, reference_images=None, column: str = "frechet_distance", samples_first: bool = False):
        self.net, self.column = net, column
        # FD is symmetric, sqrtm's rounding is not (1e-9 relative): evaluate's report has always put the samples
        # first, the grid and the benchmarks the real images; each keeps its numbers bit for bit.
        self.samples_first = samples_first
        if net is not None:
            _required(reference_images, "real images to compare with", self)
        self.reference_fit = None if net is None else gaussian_fit(net(reference_images))

    @classmethod
    def from_reference(cls, reference: Reference) -> FrechetDistance:
        return cls(reference.net, reference.heldout)

    def __call__(self, samples: Samples) -> dict:
        if self.net is None:
            return {self.column: None}
        fit = gaussian_fit(self.net(samples.images))
        first, second = (fit, self.reference_fit) if self.samples_first else (self.reference_fit, fit)
        return {self.column: frechet_distance_from_fits(*first, *second)}


class GuidedShare:
    """How much the guard acted: the share of (step, sample) pairs it guided and the highest t at which it fired;
    None for both without a trace (plain sampling, rejection sampling)."""

    name = "guided_share"

    @classmethod
    def from_reference(cls, reference: Reference) -> GuidedShare:
        return cls()

    def __call__(self, samples: Samples) -> dict:
        fired = samples.trace.get("fired")
        return {
            "steps_guided": None if fired is None else float(fired.mean()),
            "last_fired_t": last_fired_t(fired, samples.timesteps),
        }

    @staticmethod
    def pool(earlier: dict, later: dict) -> dict:
        """Guided steps over both rounds (weighted by images), the higher window; a round without a trace is left
        out."""
        guided = [(row["steps_guided"], row["n"]) for row in (earlier, later) if row["steps_guided"] is not None]
        fired = [row["last_fired_t"] for row in (earlier, later) if row["last_fired_t"] is not None]
        return {
            "steps_guided": sum(g * k for g, k in guided) / sum(k for _, k in guided) if guided else None,
            "last_fired_t": max(fired) if fired else None,
        }


def last_fired_t(fired: np.ndarray | None, timesteps: np.ndarray | None) -> int | None:
    """The highest timestep at which any sample was guided (fired: steps x samples)."""
    if fired is None or timesteps is None or not fired.any():
        return None
    return int(np.asarray(timesteps)[fired.any(axis=1)].max())


class GuardActivity:
    """The guard's activity as run records name it: the share of (step, sample) pairs guided and the share of samples
    guided at least once; no columns without a trace."""

    name = "guard_activity"

    @classmethod
    def from_reference(cls, reference: Reference) -> GuardActivity:
        return cls()

    def __call__(self, samples: Samples) -> dict:
        return self.of_trace(samples.trace)

    @staticmethod
    def of_trace(trace: Mapping[str, np.ndarray]) -> dict:
        fired = trace.get("fired")
        if fired is None:
            return {}
        return {
            "share_of_steps_guided": float(fired.mean()),
            "share_of_samples_ever_guided": float(fired.any(axis=0).mean()),
        }


class ClassAgreement:
    """The share of class-conditional samples the feature net reads as the class they were asked for (None for
    unconditional samples)."""

    name = "class_agreement"

    def __init__(self, net):
        self.net = net

    @classmethod
    def from_reference(cls, reference: Reference) -> ClassAgreement:
        return cls(_required(reference.net, "a feature net", cls))

    def __call__(self, samples: Samples) -> dict:
        if samples.labels is None:
            return {"class_agreement": None}
        return {"class_agreement": float((self.net.predict(samples.images) == samples.labels).mean())}


class ClassSkew:
    """Whether guidance piles the samples into a few classes: the largest predicted class's share and, against a
    baseline set of samples (plain sampling's, predicted once, here), the largest factor by which a class's share
    grew."""

    name = "class_skew"

    def __init__(self, net, baseline_images=None):
        self.net = net
        self.baseline = None if baseline_images is None else self.shares(baseline_images)

    @classmethod
    def from_reference(cls, reference: Reference) -> ClassSkew:
        return cls(_required(reference.net, "a feature net", cls))

    def shares(self, images) -> np.ndarray:
        return class_shares(self.net, images)

    def __call__(self, samples: Samples) -> dict:
        shares = self.shares(samples.images)
        skew = {"largest_class_share": float(shares.max())}
        if self.baseline is not None:
            skew["largest_class_ratio_vs_first"] = float(np.max(shares / np.maximum(self.baseline, 1e-12)))
        return skew


class ClassShares:
    """Each class's share of the samples as the feature net predicts them (to 4 decimals)."""

    name = "class_shares"

    def __init__(self, net):
        self.net = net

    @classmethod
    def from_reference(cls, reference: Reference) -> ClassShares:
        return cls(_required(reference.net, "a feature net", cls))

    def __call__(self, samples: Samples) -> dict:
        return {"class_shares": class_shares(self.net, samples.images).round(4).tolist()}


def class_shares(net, images) -> np.ndarray:
    """Each class's share of the images, as the feature net predicts them."""
    return np.bincount(net.predict(images), minlength=net.num_classes) / len(images)


class SampleOnlyMembershipAUC:
    """The black-box membership attack on the samples alone (members vs held-out images by their distance to the
    nearest sample): AUC, TPR at 1% FPR and the one-sided Mann-Whitney p. The attack holds its candidates' features;
    no attack, no columns."""

    name = "sample_only_mia"

    def __init__(self, attack: Callable | None):
        self.attack = attack  # attacks.SampleNNAttack (evaluation sits below attacks, so it is handed in)

    @classmethod
    def from_reference(cls, reference: Reference) -> SampleOnlyMembershipAUC:
        return cls(_required(reference.attack, "a sample-only attack", cls))

    def __call__(self, samples: Samples) -> dict:
        if self.attack is None:
            return {}
        result = self.attack(samples.images)
        return {
            "mia_sample_nn_auc": round(result.auc, 4),
            "mia_sample_nn_tpr_at_1pct_fpr": round(result.stats.tpr_at_1pct_fpr, 4),
            "mia_sample_nn_mann_whitney_p": result.mann_whitney_p,
        }


class Time:
    """Wall-clock seconds of the run (to 0.01 s; against the first row: time_vs_plain), or per accepted image."""

    name = "time"

    def __init__(self, per_image: bool = False):
        self.per_image = per_image

    @classmethod
    def from_reference(cls, reference: Reference) -> Time:
        return cls()

    def __call__(self, samples: Samples) -> dict:
        seconds = _required(samples.seconds, "the run's seconds", self)
        if self.per_image:
            return {"seconds_per_image": seconds / len(samples.images)}
        return {"seconds": round(seconds, 2)}

    def relate(self, row: dict, first: dict) -> dict:
        if self.per_image:
            return {}
        return {"time_vs_plain": row["seconds"] / max(first["seconds"], 1e-9)}


class DenoiserCalls:
    """Denoiser calls of the run, in all and per accepted image (rejection sampling pays for its redraws)."""

    name = "denoiser_calls"

    @classmethod
    def from_reference(cls, reference: Reference) -> DenoiserCalls:
        return cls()

    def __call__(self, samples: Samples) -> dict:
        calls = _required(samples.denoiser_calls, "the run's denoiser calls", self)
        return {"denoiser_calls": int(calls), "denoiser_calls_per_image": calls / len(samples.images)}


MEASURES: dict[str, type] = {
    measure.name: measure
    for measure in (
        NearCopyShare,
        FrechetDistance,
        GuidedShare,
        GuardActivity,
        ClassAgreement,
        ClassSkew,
        ClassShares,
        SampleOnlyMembershipAUC,
        Time,
        DenoiserCalls,
    )
}


class Judge:
    """Many measures in one pass: each sample result becomes one row, the measures' columns in their order."""

    def __init__(self, measures: Sequence[Measure]):
        self.measures = list(measures)

    @classmethod
    def from_reference(cls, reference: Reference, names: Iterable[str] | None = None) -> Judge:
        """The registered measures `names` (default: all of them, in MEASURES' order), each fitted on `reference`."""
        return cls([measure_class(name).from_reference(reference) for name in (MEASURES if names is None else names)])

    def __call__(self, result, *, seconds: float | None = None, labels: np.ndarray | None = None) -> dict:
        """One row for a sample result (see Samples.of for what it may be)."""
        samples = Samples.of(result, seconds=seconds, labels=labels)
        row = {}
        for measure in self.measures:
            row.update(measure(samples))
        return row

    def relate(self, rows: list[dict]) -> list[dict]:
        """Add each measure's columns against the first row (plain sampling) to every row, in place."""
        first = rows[0]
        for row in rows:
            for measure in self.measures:
                if hasattr(measure, "relate"):
                    row.update(measure.relate(row, first))
        return rows


PLUGIN_GROUP = "cpsample.measures"  # entry points NAME = "module:MeasureClass" of other installed packages


def available_measures() -> dict[str, type]:
    """The built-in measures, then those other installed packages register in the `cpsample.measures` entry-point
    group (a plugin may not take a built-in's name)."""
    return {**_plugin_measures(), **MEASURES}


@functools.lru_cache(maxsize=None)
def _plugin_measures() -> dict[str, type]:
    return {entry.name: entry.load() for entry in entry_points(group=PLUGIN_GROUP)}


def measure_class(name: str) -> type:
    measures = available_measures()
    if name not in measures:
        raise ValueError(f"unknown measure {name!r}; choose from {', '.join(measures)}")
    return measures[name]


def pool_rows(earlier: dict, later: dict, measures: Iterable) -> dict:
    """One setting measured in two rounds as one row: the columns of measures that add up (near-copies, guided steps)
    over both rounds, every other column (FD is not additive; time) from the later round. measures: classes or
    instances."""
    pooled = dict(later)
    for measure in measures:
        if hasattr(measure, "pool"):
            pooled.update(measure.pool(earlier, later))
    return pooled


# What each method's accepted images cost (seconds, denoiser calls: in all and per image) and, for the guards, how
# often they acted.
COST_MEASURES = (Time(), Time(per_image=True), DenoiserCalls(), GuardActivity())
