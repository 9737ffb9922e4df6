"""The measures and the Judge every caller measures samples with: each column is what the code it replaced computed, on
the bundled digits, and the reference data a measure needs is fitted once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpsample.evaluation import NearCopyDetector, clopper_pearson, frechet_distance_in, load_feature_net
from cpsample.evaluation.measures import (
    MEASURES,
    FrechetDistance,
    GuidedShare,
    Judge,
    NearCopyShare,
    Reference,
    Samples,
    Time,
    pool_rows,
)
from cpsample.models.bundle import resolve_model_dir, training_data


@pytest.fixture(scope="module")
def digits():
    """The bundled model's members and held-out digits; samples: 6 exact member copies among 18 held-out digits."""
    dataset, split = training_data(resolve_model_dir("bundled", "denoiser"))
    members, heldout = dataset.images[split.members], dataset.images[split.nonmembers]
    samples = np.concatenate([members[:6], heldout[-18:]]).astype(np.float32)
    return members, heldout[:300], samples


class CountingNet:
    """The bundled feature net, counting the images it is shown per call."""

    def __init__(self):
        self.net = load_feature_net("bundled", channels=1)
        self.calls = []

    def __call__(self, images):
        self.calls.append(len(images))
        return self.net(images)


def test_near_copy_columns_are_the_detector_count_and_its_exact_interval(digits):
    members, _, samples = digits
    detector = NearCopyDetector(members)
    copies = detector(samples)
    row = Judge([NearCopyShare(detector)])(samples)
    assert row == {
        "n": len(samples),
        "near_copies": int(copies.sum()),
        "near_copy_share": float(copies.mean()),
        "ci_low": clopper_pearson(int(copies.sum()), len(copies))[0],
        "ci_high": clopper_pearson(int(copies.sum()), len(copies))[1],
    }
    assert list(row) == ["n", "near_copies", "near_copy_share", "ci_low", "ci_high"]  # calibration.csv's order
    assert row["near_copies"] >= 6  # the exact copies are found


def test_frechet_distance_fits_its_real_images_once_and_keeps_the_old_numbers(digits):
    members, heldout, samples = digits
    net = CountingNet()
    judge = Judge([FrechetDistance(net, heldout)])
    assert net.calls == [len(heldout)]  # fitted at construction
    batches = [samples, samples[::-1], heldout[:40]]
    values = [judge(batch)["frechet_distance"] for batch in batches]
    assert net.calls == [len(heldout)] + [len(batch) for batch in batches]  # never again: only the samples
    for batch, value in zip(batches, values):
        assert value == frechet_distance_in(net.net, heldout, batch)["value"]  # bit for bit, real images first
    assert values[0] == pytest.approx(values[1])  # order of the samples does not matter
    assert Judge([FrechetDistance(None)])(samples) == {"frechet_distance": None}  # no net: the column stays, empty


def test_guided_share_reads_the_trace_and_pools_two_rounds_by_images():
    fired = np.zeros((4, 10), dtype=bool)  # steps x samples, timesteps 750, 500, 250, 0
    fired[1, :3] = fired[2, 0] = True
    traced = Samples(np.zeros((10, 1, 2, 2), np.float32), {"fired": fired}, np.array([750, 500, 250, 0]))
    row = Judge([GuidedShare()])(traced)
    assert row == {"steps_guided": 4 / 40, "last_fired_t": 500}
    assert Judge([GuidedShare()])(np.zeros((2, 1, 2, 2))) == {"steps_guided": None, "last_fired_t": None}
    earlier = {"n": 10, "near_copies": 2, **row}
    later = {"n": 30, "near_copies": 1, "steps_guided": 0.5, "last_fired_t": 250, "frechet_distance": 4.0}
    pooled = pool_rows(earlier, later, [NearCopyShare, GuidedShare])
    assert pooled["steps_guided"] == pytest.approx((0.1 * 10 + 0.5 * 30) / 40) and pooled["last_fired_t"] == 500
    assert (pooled["n"], pooled["near_copies"], pooled["near_copy_share"]) == (40, 3, 3 / 40)
    assert (pooled["ci_low"], pooled["ci_high"]) == clopper_pearson(3, 40)
    assert pooled["frechet_distance"] == 4.0  # not additive: the later round's


def test_time_is_compared_with_the_first_row():
    judge = Judge([Time()])
    rows = [judge(np.zeros((2, 1, 2, 2)), seconds=seconds) for seconds in (2.004, 3.0)]
    judge.relate(rows)
    assert rows == [{"seconds": 2.0, "time_vs_plain": 1.0}, {"seconds": 3.0, "time_vs_plain": 1.5}]


def test_a_sample_result_and_its_bare_images_give_the_same_row(digits):
    members, heldout, samples = digits

    class Result:  # what generate returns, as far as measures read it
        images = torch.from_numpy(samples)
        trace, timesteps, seconds, denoiser_calls = {}, None, 1.5, 10

    net = load_feature_net("bundled", channels=1)
    judge = Judge.from_reference(
        Reference(detector=NearCopyDetector(members), net=net, heldout=heldout),
        ("near_copy_share", "frechet_distance", "class_agreement"),
    )
    assert judge(Result()) == judge(samples) == judge(Samples.of(Result()))
    assert judge(samples)["class_agreement"] is None  # unconditional samples: no class asked for
    read = net.predict(samples)
    asked = np.where(np.arange(len(samples)) < 6, read, (read + 1) % 10)  # the first 6 kept their class
    assert judge(samples, labels=asked)["class_agreement"] == 6 / len(samples)


def test_a_registered_measure_is_a_column_of_every_judge_built_from_the_registry(digits, monkeypatch):
    members, _, samples = digits

    class Brightness:
        name = "brightness"

        @classmethod
        def from_reference(cls, reference):
            return cls()

        def __call__(self, samples):
            return {"mean_brightness": float(samples.images.mean())}

    monkeypatch.setitem(MEASURES, Brightness.name, Brightness)  # the one registry line
    judge = Judge.from_reference(Reference(detector=NearCopyDetector(members)), ("near_copy_share", "brightness"))
    row = judge(samples)
    assert list(row)[-1] == "mean_brightness" and row["mean_brightness"] == float(samples.mean())
    assert row["near_copies"] >= 6


def test_a_registered_measure_reaches_the_calibration_grid(monkeypatch):
    from cpsample.calibration import search as calibrate

    class Steps:
        name = "steps"

        @classmethod
        def from_reference(cls, reference):
            return cls()

        def __call__(self, samples):
            return {"steps_recorded": len(samples.timesteps)}

    monkeypatch.setitem(MEASURES, Steps.name, Steps)
    monkeypatch.setattr(calibrate, "GRID_MEASURES", (*calibrate.GRID_MEASURES, Steps.name))
    settings = calibrate.GridSettings(n_samples=2, steps=3, alphas=(0.2,), scales=(10.0,), quality_net=None)
    rows = calibrate.run_grid(settings, progress=False)
    assert [row["steps_recorded"] for row in rows] == [3, 3]
    assert list(rows[0])[-3:] == ["seconds", "steps_recorded", "time_vs_plain"]


def test_a_measure_says_what_it_is_missing():
    with pytest.raises(ValueError, match="near_copy_share measure needs a near-copy detector"):
        Judge.from_reference(Reference(), ("near_copy_share",))
    with pytest.raises(ValueError, match="unknown measure 'fid'; choose from near_copy_share, "):
        Judge.from_reference(Reference(), ("fid",))
    with pytest.raises(ValueError, match="time measure needs the run's seconds"):
        Judge([Time()])(np.zeros((2, 1, 2, 2)))
